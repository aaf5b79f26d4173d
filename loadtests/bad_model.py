"""A model that loads and answers /ping but fails every prediction: the bad-model-promotion drill.

Logged as code (``mlflow.pyfunc.log_model(python_model=<this file>)``), standalone: it travels
inside the artifact. It fails with ``INTERNAL_ERROR``, which MLflow's scoring server returns as
HTTP 500: a broken model is the server's fault, not the client's (a plain exception would be
reported as 400 BAD_REQUEST by the scoring server and look like bad input).
"""

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR


class BrokenRecommender(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        raise MlflowException("drill: this model version is broken on purpose", error_code=INTERNAL_ERROR)


set_model(BrokenRecommender())
