"""Data: manifests, img2dataset ingestion, webdataset shard reading."""
