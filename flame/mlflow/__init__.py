"""All of the project's MLflow code: the tracking store (``store``), the training tracker
(``tracker``), the checkpoint as a pyfunc model (``pyfunc``, ``pyfunc_code``) and the
registry's promotion gate (``gate``). The rest of the library logs through
``flame.tracking.Tracker`` and never imports mlflow itself.
"""
