"""Data in: manifests, img2dataset ingestion into webdataset shards, reading shards, and the one image reader."""
