import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Each part of the project keeps its shared fixtures in its own module.
pytest_plugins = [
    "tests.fixtures.text",
    "tests.fixtures.data",
    "tests.fixtures.train",
    "tests.fixtures.evaluation",
    "tests.fixtures.orchestration",
    "tests.fixtures.tracking",
    "tests.fixtures.services",
    "tests.fixtures.cluster",
]
