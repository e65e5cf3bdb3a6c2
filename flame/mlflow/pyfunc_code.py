"""The code MLflow runs to build the FLAME pyfunc when a logged model is loaded."""

from mlflow.models import set_model

from flame.mlflow.pyfunc import FlamePyfunc

set_model(FlamePyfunc())
