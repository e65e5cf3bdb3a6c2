"""Dagster concurrency pools: the LLM-embedding step holds a slot of ``flame-llm`` and the training
step one of ``flame-train``. Their limits live in the instance's ``dagster.yaml``
(``concurrency.pools``; the project's is ``orchestration/dagster.yaml``: one slot each), where an
operator may change them in the UI or with ``dagster instance concurrency set``."""

LLM_POOL = "flame-llm"
TRAIN_POOL = "flame-train"
