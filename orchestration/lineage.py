"""What an asset reads from upstream: the materialisation its own run made when there is one,
else the latest one. Two runs in flight therefore never read each other's outputs, and every
asset records which run its input came from (``upstream_run_id``)."""

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType

from flame.errors import FlameError


def run_id_of(context) -> str:
    """The run of an asset or asset-check execution context."""
    return getattr(context, "run_id", None) or context.op_execution_context.run_id


def _in_run(instance, run_id: str, key: str, partition: str | None):
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    for record in reversed(records):
        event = record.event_log_entry.asset_materialization
        if event is not None and event.asset_key == AssetKey(key) and (partition is None or event.partition == partition):
            return record
    return None


def latest_record(instance, key: str, partition: str | None = None):
    """The latest materialisation record of ``key`` (of one partition), or None."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0] if records else None


def metadata_of(record) -> dict:
    values = {k: v.value for k, v in record.event_log_entry.asset_materialization.metadata.items()}
    values["upstream_run_id"] = record.event_log_entry.run_id
    return values


def upstream(context, key: str, partition: str | None = None) -> dict:
    """Metadata of ``key``'s materialisation made by this run, else its latest (an error if none)."""
    instance = context.instance
    record = _in_run(instance, run_id_of(context), key, partition) or latest_record(instance, key, partition)
    if record is None:
        raise FlameError(f"asset {key!r}{f' [{partition}]' if partition else ''} has not been materialised yet")
    return metadata_of(record)
