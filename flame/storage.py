"""The storage layout: where every step of the pipeline writes and reads under the storage root
(``orchestration.storage_root``, default ``data/``), so the Dagster assets, the DVC stages and the
command line agree on every path.

    manifests/<key>.jsonl          one data shard's rows of a manifest (URLs made absolute)
    downloads/<key>/               img2dataset's output for that data shard
    shards/<key>.tar               the data shard's images (+ .parquet, _stats.json): what training reads
    embeddings/<fingerprint>/      the embedding store (one <key>.safetensors per data shard)
    training_sets/<training id>/   exactly what one training read: shards/<key>.tar and embeddings/<fingerprint>/
    models/<training id>/          the checkpoint folder of that training
    evaluations/<training id>/     its evaluation (evaluation.json and plots)

The root is a local folder or an object-store URL (``s3://bucket/prefix``, see
``flame.locations``): every path below is then a ``UPath`` under it.
"""

from __future__ import annotations

from pathlib import Path

from flame.locations import Location, is_url, location

SHARD_SUFFIXES = (".tar", ".parquet", "_stats.json")
EVALUATION_FILE = "evaluation.json"
TRAINING_SET_FILE = "training_set.json"  # under a remote root: written last, once the set is complete


class StoragePaths:
    """The folders under ``root`` and the file of each data shard or training in them."""

    def __init__(self, root: str | Path):
        self.root = location(root)
        self.manifests = self.root / "manifests"
        self.downloads = self.root / "downloads"
        self.shards = self.root / "shards"
        self.embeddings = self.root / "embeddings"
        self.training_sets = self.root / "training_sets"
        self.models = self.root / "models"
        self.evaluations = self.root / "evaluations"

    @property
    def remote(self) -> bool:
        return is_url(self.root)

    def manifest(self, key: str) -> Location:
        return self.manifests / f"{key}.jsonl"

    def download(self, key: str) -> Location:
        return self.downloads / key

    def shard(self, key: str) -> Location:
        return self.shards / f"{key}.tar"

    def training_set(self, training_id: str) -> Location:
        return self.training_sets / training_id

    def model(self, training_id: str) -> Location:
        return self.models / training_id

    def evaluation(self, training_id: str) -> Location:
        return self.evaluations / training_id / EVALUATION_FILE
