"""``flame train`` and ``flame predict`` through the real command line (in-process),
predict with the real frozen LLM."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

import flame.model
from flame.app.cli import main
from flame.config import load_config, repo_root
from flame.errors import FlameError
from flame.digest import sha256_file
from flame.model import FlameModel, ModelConfig
from tests.fixtures.train import tiny_train_config, write_synthetic_store

pytestmark = pytest.mark.slow

IMAGE = next((repo_root() / "data" / "sample" / "images").glob("*.jpg"))


@pytest.fixture
def params_file(tmp_path) -> Path:
    """The project's params.yaml plus a 'unit' profile: a 2-block ViT at 32 px, 1 epoch."""
    params = yaml.safe_load((repo_root() / "params.yaml").read_text())
    params["profiles"]["unit"] = {
        "extends": "tiny",
        "image": {"img_size": 32, "patch_size": 8, "model_kwargs": {"depth": 2}},
        "train": {"epochs": 1, "batch_size": 16, "workers": 0, "warmup_steps": 1, "precision": "bf16"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_train_command_trains_then_refuses_to_overwrite(params_file, sample_shards, synthetic_store,
                                                        tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["train", "--config", str(params_file), "--profile", "unit", "--shards", str(sample_shards),
            "--embeddings", str(synthetic_store), "--out", str(out)]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()  # stdout is the result alone; progress goes to stderr
    summary = json.loads(line)
    assert summary["steps"] == 4 and summary["checkpoint"] == str(out)
    assert flame.model.load(out).image_config.img_size == 32

    assert main(argv) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0  # already complete: nothing to do, summary again
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4


def test_train_command_reports_a_missing_shard_folder(params_file, synthetic_store, tmp_path, capsys):
    argv = ["train", "--config", str(params_file), "--profile", "unit", "--shards", str(tmp_path / "nope"),
            "--embeddings", str(synthetic_store), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "shard directory not found" in capsys.readouterr().err


def test_train_command_refuses_embeddings_of_a_shard_that_changed_since(params_file, sample_shards, tmp_path, capsys):
    shards = Path(shutil.copytree(sample_shards, tmp_path / "shards"))
    store = write_synthetic_store(tmp_path / "emb", shards).path
    embedded_from = sha256_file(shards / "00001.tar")
    # the shard is downloaded again after it was embedded: same keys, another caption
    with tarfile.open(sample_shards / "00001.tar") as tin, tarfile.open(shards / "00001.tar", "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read()
            if member.name.endswith(".txt"):
                data = b"a caption that was not embedded"
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    argv = ["train", "--config", str(params_file), "--profile", "unit", "--shards", str(shards),
            "--embeddings", str(store), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "shard '00001'" in err and str(store / "00001.safetensors") in err and "flame embed" in err
    assert embedded_from in err and sha256_file(shards / "00001.tar") in err
    assert not (tmp_path / "out" / "model.safetensors").exists()  # refused before any training step


@pytest.fixture
def llm_checkpoint(tiny_encoder, tmp_path) -> Path:
    """An (untrained) model saved against the real tiny LLM's fingerprint and width."""
    config = tiny_train_config()
    torch.manual_seed(0)
    model = FlameModel(ModelConfig(embed_dim=tiny_encoder.hidden_size, image=config.image,
                                   text=load_config(profile="tiny").text.model_dump(mode="json"),
                                   text_fingerprint=tiny_encoder.fingerprint))
    return model.save(tmp_path / "ckpt")


def test_predict_prints_zero_shot_scores(llm_checkpoint, capsys):
    labels = ["a dog running", "a child on stairs", "a red car"]
    argv = ["predict", "--checkpoint", str(llm_checkpoint), "--image", str(IMAGE), "--labels", ",".join(labels), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    scores = result["scores"]
    assert sorted(row["label"] for row in scores) == sorted(labels)
    assert sum(row["softmax"] for row in scores) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= row["sigmoid"] <= 1.0 for row in scores)
    assert [row["logit"] for row in scores] == sorted((row["logit"] for row in scores), reverse=True)


def test_encode_text_is_the_normalised_facet_average(llm_checkpoint, tiny_encoder):
    model = flame.model.load(llm_checkpoint)
    model.text.set_encoder(tiny_encoder)
    emb = model.encode_text(["a dog", "two cats on a sofa"], facet_set="short")
    per_facet = tiny_encoder.encode(["a dog", "two cats on a sofa"], "short").float()
    # the reference's evaluation: the K hidden states averaged, then normalised
    expected = torch.nn.functional.normalize(per_facet.mean(dim=1), dim=-1)
    torch.testing.assert_close(emb, expected)
    assert emb.shape == (2, tiny_encoder.hidden_size)


def test_model_refuses_another_text_encoder(tiny_encoder, tmp_path):
    config = tiny_train_config()
    model = FlameModel(ModelConfig(embed_dim=tiny_encoder.hidden_size, image=config.image,
                                   text=config.text.model_dump(mode="json"), text_fingerprint="0123456789abcdef"))
    with pytest.raises(FlameError, match=f"trained against 0123456789abcdef.*has {tiny_encoder.fingerprint}"):
        model.text.set_encoder(tiny_encoder)


def test_predict_reports_an_unreadable_image(llm_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", str(llm_checkpoint), "--image", str(bad), "--labels", "a,b"]) == 2
    assert "cannot read the image" in capsys.readouterr().err
