"""Asset metadata: reading what an upstream materialisation recorded, and writing what the
Dagster UI shows (tables, links)."""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter

from flame.errors import FlameError


def latest_metadata(context, key: str, partition: str | None = None) -> dict:
    """The metadata values of ``key``'s latest materialisation (an error when there is none)."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records or records[0].event_log_entry.asset_materialization is None:
        raise FlameError(f"asset {key!r}{f' [{partition}]' if partition else ''} has not been materialised yet")
    return {k: v.value for k, v in records[0].event_log_entry.asset_materialization.metadata.items()}


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/")[:80] for c in cols) + " |")
    return "\n".join(lines)


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {tracking_uri}  ->  #/experiments/{experiment_id}/runs/{run_id}"
