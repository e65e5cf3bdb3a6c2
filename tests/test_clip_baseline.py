"""The CLIP baseline mode: a from-scratch open_clip text tower trained with the image tower."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import flame.model
from flame.config import load_config
from flame.errors import FlameError
from flame.text_modes.clip import ClipText, clip_text_config, tokenize
from flame.train import run_training
from tests.fixtures.train import tiny_train_config

SMALL_TOWER = {"width": 32, "heads": 2, "layers": 1, "embed_dim": 16, "context_length": 24}
MULTILINGUAL = ["A dog runs on the beach.", "一只狗在海滩上奔跑。", "كلب يجري على الشاطئ", "Ein Hund läuft am Strand."]


def clip_config(**train_overrides):
    config = tiny_train_config(**train_overrides)
    config.text.mode = "clip"
    config.clip_text = config.clip_text.model_validate(SMALL_TOWER)
    return config


def test_clip_profile_switches_the_text_mode_and_keeps_the_image_side():
    clip, tiny = load_config(profile="clip"), load_config(profile="tiny")
    assert clip.text.mode == "clip" and tiny.text.mode == "flame"
    assert clip.image == tiny.image and clip.train == tiny.train


def test_trimming_the_padding_changes_no_text_embedding():
    torch.manual_seed(0)
    tower = ClipText({"clip_text": {**SMALL_TOWER, "context_length": 48}}).eval()
    tokens = tokenize(["A dog.", "Two children play in the snow next to a small red house.", ""], 48)
    assert ClipText._trim_padding(tokens).shape[1] == int((tokens != 0).sum(dim=1).max()) < 48
    # open_clip's own forward runs all 48 positions.
    untrimmed = torch.nn.functional.normalize(tower.transformer(tokens), dim=-1)
    torch.testing.assert_close(tower(tokens), untrimmed, rtol=1e-5, atol=1e-6)


def test_tokenizer_and_tower_handle_multilingual_text():
    tokens = tokenize(MULTILINGUAL + ["word " * 200], context_length=24)
    assert tokens.shape == (5, 24) and tokens.dtype == torch.long
    # Non-Latin scripts become real byte-level BPE tokens, not unknowns; a long text is cut but keeps its end token.
    assert all(int((row > 0).sum()) > 4 for row in tokens[:4])
    assert int(tokens[4, -1]) == int(tokens[0].max())

    torch.manual_seed(0)
    tower = ClipText(clip_text_config(clip_config()))
    features = tower.encode(MULTILINGUAL)
    assert features.shape == (4, 16)
    assert torch.allclose(features.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(features[0], features[1])  # different scripts give different embeddings


@pytest.mark.slow
def test_clip_mode_trains_saves_and_reloads(sample_shards, tmp_path):
    out = tmp_path / "clip"
    summary = run_training(clip_config(epochs=2, batch_size=16), sample_shards, None, out)
    assert summary["steps"] == 2 * summary["steps_per_epoch"] > 0
    assert all(torch.isfinite(torch.tensor(summary["losses"])))
    assert summary["losses"][-1] < summary["losses"][0]

    trained = flame.model.load(out)
    assert trained.text_mode == "clip"
    assert trained.text_fingerprint is None  # a trained text tower: evaluation must not reuse cached text embeddings
    stored = json.loads((out / "model_config.json").read_text())
    assert stored["text"]["clip_text"] == SMALL_TOWER | {"caption_field": "caption"}
    # The text tower's weights are in model.safetensors and come back; they moved away from their initialisation.
    torch.manual_seed(0)
    fresh = ClipText(trained.text_config)
    for name, param in trained.text.state_dict().items():
        assert param.shape == fresh.state_dict()[name].shape
    assert not torch.equal(trained.text.state_dict()["transformer.token_embedding.weight"],
                           fresh.state_dict()["transformer.token_embedding.weight"])
    texts = trained.encode_text(MULTILINGUAL[:2], facet_set="long")
    assert texts.shape == (2, 16)
    again = flame.model.load(out).encode_text(MULTILINGUAL[:2])
    assert torch.allclose(texts, again)


def test_flame_mode_still_needs_embeddings(tmp_path):
    with pytest.raises(FlameError, match="--embeddings"):
        run_training(tiny_train_config(), tmp_path / "shards", None, tmp_path / "flame")


@pytest.mark.slow
def test_train_cli_in_clip_mode_needs_no_embeddings(sample_shards, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, "-m", "flame", "train", "--profile", "clip", "--shards", str(sample_shards),
         "--out", str(out), "--epochs", "1"],
        capture_output=True, text=True, env=_cli_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 1
    assert flame.model.load(out).text_mode == "clip"
    missing = subprocess.run(
        [sys.executable, "-m", "flame", "train", "--profile", "tiny", "--shards", str(sample_shards),
         "--out", str(tmp_path / "no-emb")], capture_output=True, text=True, env=_cli_env(tmp_path),
    )
    assert missing.returncode == 2 and "--embeddings" in missing.stderr


def _cli_env(tmp_path):
    """A params.yaml whose clip profile is the small test tower at 32 px, one batch of 64 per epoch."""
    import os

    import yaml

    from flame.config import read_params

    params = read_params()
    params["profiles"]["clip"] = {
        "extends": "clip_base", "clip_text": SMALL_TOWER,
        "image": {"img_size": 32, "patch_size": 8, "model_kwargs": {"depth": 2}},
        "train": {"batch_size": 64, "workers": 0, "warmup_steps": 1, "precision": "bf16"},
    }
    params["profiles"]["clip_base"] = read_params()["profiles"]["clip"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return {**os.environ, "FLAME_CONFIG": str(path)}


_WITHOUT_OPEN_CLIP = """
import sys
sys.modules["open_clip"] = None  # as if the clip extra were not installed: importing it fails
from flame.config import load_config
from flame.errors import FlameError
from flame.model import FlameModel, ModelConfig
from flame.text_modes import training_side

tiny = load_config(profile="tiny", overrides={"image": {"img_size": 32, "model_kwargs": {"depth": 1}}})
FlameModel(ModelConfig(embed_dim=16, image=tiny.image, text=tiny.text.model_dump(mode="json")))  # the FLAME path builds without it
try:
    training_side(load_config(profile="clip"), ".", None)
except FlameError as exc:
    print(exc)
"""


def test_flame_mode_needs_no_open_clip_and_clip_mode_names_its_extra():
    out = subprocess.run([sys.executable, "-c", _WITHOUT_OPEN_CLIP], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "text.mode clip" in out.stdout and "pip install 'flame-pipeline[clip]'" in out.stdout
