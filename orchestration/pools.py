"""Dagster concurrency pools: the LLM-embedding step and the training step each hold one slot
of their pool while they run, so a machine never loads two LLMs or trains twice at once.

Pool limits live in the Dagster instance; ``apply_pool_limits`` writes the configured ones
(``orchestration.pool_limits``) there. The new-manifest sensor does it on every tick and the
demo before it runs, so a fresh ``DAGSTER_HOME`` gets them without a dagster.yaml.
"""

from flame.config import FlameConfig

LLM_POOL = "flame-llm"
TRAIN_POOL = "flame-train"


def apply_pool_limits(instance, config: FlameConfig) -> dict[str, int]:
    """Set each configured pool's slot count on ``instance`` where it differs; returns the limits."""
    storage = instance.event_log_storage
    for pool, limit in config.orchestration.pool_limits.items():
        if storage.get_concurrency_info(pool).slot_count != limit:
            storage.set_concurrency_slots(pool, limit)
    return dict(config.orchestration.pool_limits)
