"""The training identity: which settings make another training, its id, and how the train
state records it."""

from __future__ import annotations

import pytest

from flame.digest import config_digest
from flame.errors import FlameError
from flame.train.identity import NON_WEIGHT_SETTINGS, TrainingIdentity, identity_config, training_identity
from tests.fixtures.train import tiny_train_config

DIGESTS = {"00000": "a" * 64, "00001": "b" * 64}


def _identity(config=None, digests=DIGESTS, text="encoder-fp", source="store-fp") -> TrainingIdentity:
    return training_identity(config or tiny_train_config(), digests, text, source)


def test_settings_that_change_no_weight_keep_the_identity():
    base = _identity()
    config = tiny_train_config(epochs=9, log_every_steps=7, checkpoint_every_steps=3, device="cuda:1",
                               nonfinite_check="log_steps")
    config.text.batch_size, config.text.cache_dir = 4, "/elsewhere"
    config.text.distributor, config.text.cluster_address, config.text.workers = "ray", "head:6379", 8
    config.text.worker_cpus, config.text.worker_gpus, config.text.worker_retries = 2.0, 1.0, 0
    same = _identity(config)
    assert same == base and same.id == base.id and same.changes_since(base) == []
    assert NON_WEIGHT_SETTINGS == {"train": ("epochs", "log_every_steps", "checkpoint_every_steps", "device",
                                             "nonfinite_check"),
                                   "text": ("batch_size", "cache_dir", "distributor", "cluster_address", "workers",
                                            "worker_cpus", "worker_gpus", "worker_retries")}
    for section, keys in NON_WEIGHT_SETTINGS.items():
        assert not set(keys) & set(identity_config(config)[section])


def test_every_other_change_is_another_training_and_is_named():
    base = _identity()
    other = _identity(tiny_train_config(lr=1e-3), digests={"00000": "a" * 64, "00001": "c" * 64, "00002": "d" * 64},
                      text="encoder-2", source="store-2")
    assert other.id != base.id
    assert other.changes_since(base) == [
        "it was trained against text encoder fingerprint encoder-fp, but this run has encoder-2; "
        "its text embeddings are not comparable",
        "it was trained against embedding store fingerprint store-fp, but this run has store-2",
        f"the data changed since it was trained: 00002 added; 00001 changed (sha256 {'b' * 12}... -> {'c' * 12}...)",
        "the configuration changed since it was trained: train.lr: 0.0005 -> 0.001",
    ]
    assert _identity(digests={"00000": "a" * 64}).changes_since(base) == [
        "the data changed since it was trained: 00001 removed"]


def test_the_id_is_12_hex_digits_of_the_four_fields():
    identity = _identity()
    assert identity.id == config_digest({"config": identity.config, "data_digests": DIGESTS,
                                         "text_fingerprint": "encoder-fp", "source_fingerprint": "store-fp"}, 12)
    assert len(identity.id) == 12 and int(identity.id, 16) >= 0


def test_the_train_state_records_it_under_the_keys_it_always_had():
    identity = _identity()
    record = identity.record()
    assert record == {"training_config": identity.config, "data_digests": DIGESTS,
                      "text_fingerprint": "encoder-fp", "store_fingerprint": "store-fp"}
    assert TrainingIdentity.from_record({**record, "step": 4}) == identity
    for key, named in (("data_digests", "data"), ("training_config", "configuration"),
                       ("store_fingerprint", "embedding store fingerprint")):
        with pytest.raises(FlameError, match=f"does not record the {named} it was trained on"):
            TrainingIdentity.from_record({k: v for k, v in record.items() if k != key})


def test_the_clip_baseline_is_identified_by_its_text_tower_not_the_llm():
    config = tiny_train_config()
    config.text.mode = "clip"
    sections = identity_config(config)
    assert sections["text"] == {"mode": "clip"} and sections["clip_text"] == config.clip_text.model_dump(mode="json")
    config.text.layer = 3  # the LLM is not read in this mode
    assert identity_config(config) == sections
