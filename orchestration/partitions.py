"""Data shards (``flame.data.data_shards``) as Dagster's dynamic partitions: one partition key per
data shard, registered by the new_manifest sensor and the demo."""

from dagster import DynamicPartitionsDefinition

DATA_SHARDS = DynamicPartitionsDefinition(name="data_shards")
