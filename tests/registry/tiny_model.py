"""A tiny pyfunc for registry and router tests (MLflow "models from code": this file travels in
the artifact). ``model_config``:

* ``fail``: True makes predictions raise MlflowException INTERNAL_ERROR (HTTP 500), the stand-in for
  a bad release that errors; "raise" raises a plain exception, which MLflow's scoring server
  answers with HTTP 400 (its handling of any unexpected predict error);
* ``fail_after``: the number of predictions that succeed before ``fail`` applies (a version that
  passes its smoke test and then fails under traffic);
* ``slow_ms``: every prediction sleeps this long (a version that answers, too slowly);
* ``version_label`` is echoed so tests can tell versions apart.
"""

import itertools
import time

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Tiny(PythonModel):
    def load_context(self, context):
        cfg = context.model_config or {}
        self.fail = cfg.get("fail") or False
        self.fail_after = int(cfg.get("fail_after") or 0)
        self.slow_s = float(cfg.get("slow_ms") or 0) / 1000
        self.label = str(cfg.get("version_label", ""))
        self.calls = itertools.count()

    def predict(self, context, model_input, params=None):
        if self.slow_s:
            time.sleep(self.slow_s)
        if self.fail and next(self.calls) >= self.fail_after:
            if self.fail == "raise":
                raise RuntimeError("this version fails every request on purpose")
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

            raise MlflowException("this version fails every request on purpose", error_code=INTERNAL_ERROR)
        users = model_input["user_id"].astype(int)
        return pd.DataFrame({"user_id": users, "item_id": (users * 7) % 101, "label": self.label})


mlflow.models.set_model(Tiny())
