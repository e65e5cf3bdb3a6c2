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
"""

from __future__ import annotations

from pathlib import Path

SHARD_SUFFIXES = (".tar", ".parquet", "_stats.json")
EVALUATION_FILE = "evaluation.json"


class StoragePaths:
    """The folders under ``root`` and the file of each data shard or training in them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifests = self.root / "manifests"
        self.downloads = self.root / "downloads"
        self.shards = self.root / "shards"
        self.embeddings = self.root / "embeddings"
        self.training_sets = self.root / "training_sets"
        self.models = self.root / "models"
        self.evaluations = self.root / "evaluations"

    def manifest(self, key: str) -> Path:
        return self.manifests / f"{key}.jsonl"

    def download(self, key: str) -> Path:
        return self.downloads / key

    def shard(self, key: str) -> Path:
        return self.shards / f"{key}.tar"

    def training_set(self, training_id: str) -> Path:
        return self.training_sets / training_id

    def model(self, training_id: str) -> Path:
        return self.models / training_id

    def evaluation(self, training_id: str) -> Path:
        return self.evaluations / training_id / EVALUATION_FILE
