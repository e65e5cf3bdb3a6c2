"""The pipeline's assets, by domain: ``data`` (partitioned by data shard) and ``model``.

manifest -> image_shards -> caption_embeddings  (one partition per data shard)
         -> flame_model -> evaluation -> registered_model  (the whole data set)

Assets are thin: each calls ``flame/`` and records metadata. They pass data through files
under the storage root, not Dagster's IO managers, so a failed step leaves every earlier
asset valid on disk and a re-run picks up from it. A later asset finds the files of an
earlier one in the metadata of the materialisation its own run made (else the latest one),
see ``orchestration.lineage``; training reads exactly the registered data shards
(``orchestration.training_set``).
"""
