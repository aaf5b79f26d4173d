"""A tiny pyfunc for registry and router tests (MLflow "models from code": this file travels in
the artifact). ``model_config={"fail": True}`` makes every prediction raise (HTTP 500), the
stand-in for a bad release; ``version_label`` is echoed so tests can tell versions apart."""
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Tiny(PythonModel):
    def load_context(self, context):
        cfg = context.model_config or {}
        self.fail = bool(cfg.get("fail"))
        self.label = str(cfg.get("version_label", ""))

    def predict(self, context, model_input, params=None):
        if self.fail:
            raise RuntimeError("this version fails every request on purpose")
        users = model_input["user_id"].astype(int)
        return pd.DataFrame({"user_id": users, "item_id": (users * 7) % 101, "label": self.label})


mlflow.models.set_model(Tiny())
