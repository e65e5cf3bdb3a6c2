"""``flame predict`` on bad inputs (a decompression bomb, a missing image or checkpoint, a
checkpoint holding NaN) and on repeated labels, through the real command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from flame.app.cli import main
from flame.config import load_config, repo_root
from flame.model import FlameModel, ModelConfig
from tests.fixtures.huge_png import write_huge_png
from tests.fixtures.train import tiny_train_config

IMAGE = next((repo_root() / "data" / "sample" / "images").glob("*.jpg"))


def _model(hidden_size: int, fingerprint: str) -> FlameModel:
    torch.manual_seed(0)
    text_config = load_config(profile="tiny").text.model_dump(mode="json")
    return FlameModel(ModelConfig(embed_dim=hidden_size, image=tiny_train_config().image, text=text_config,
                                  text_fingerprint=fingerprint))


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    """A real checkpoint folder; its text side is never reached by these tests."""
    return _model(24, "0123456789abcdef").save(tmp_path / "small_ckpt")


@pytest.fixture
def llm_checkpoint(tiny_encoder, tmp_path) -> Path:
    """An (untrained) model saved against the real tiny LLM, so predict runs to the end."""
    return _model(tiny_encoder.hidden_size, tiny_encoder.fingerprint).save(tmp_path / "llm_ckpt")


def _predict(checkpoint, image, labels="a dog,a cat", *extra) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), "--image", str(image), "--labels", labels, *extra])


def test_a_decompression_bomb_is_a_clear_error(small_checkpoint, tmp_path, capsys):
    bomb = write_huge_png(tmp_path / "bomb.png")
    assert _predict(small_checkpoint, bomb) == 2
    err = capsys.readouterr().err
    assert "too large" in err and str(bomb) in err


def test_a_missing_image_is_reported_before_the_model_is_loaded(tmp_path, capsys):
    # the checkpoint does not exist either: only the image may be named
    assert _predict(tmp_path / "no-checkpoint", tmp_path / "gone.jpg") == 2
    err = capsys.readouterr().err
    assert f"--image {tmp_path / 'gone.jpg'}: cannot read the image (file not found)" in err
    assert "checkpoint" not in err


def test_a_missing_checkpoint_folder_is_named_as_such(small_checkpoint, tmp_path, capsys):
    assert _predict(tmp_path / "no-checkpoint", IMAGE) == 2
    assert f"checkpoint folder not found: {tmp_path / 'no-checkpoint'}" in capsys.readouterr().err
    (small_checkpoint / "model_config.json").unlink()
    assert _predict(small_checkpoint, IMAGE) == 2
    assert "not a FLAME checkpoint: " in capsys.readouterr().err


def test_a_checkpoint_holding_nan_is_refused_naming_the_tensor(tiny_encoder, tmp_path, capsys):
    model = _model(tiny_encoder.hidden_size, tiny_encoder.fingerprint)
    name = [n for n, p in model.named_parameters() if n.startswith("visual.")][-1]
    with torch.no_grad():
        model.get_parameter(name).view(-1)[0] = float("nan")
    checkpoint = model.save(tmp_path / "nan_ckpt")
    assert _predict(checkpoint, IMAGE) == 2
    err = capsys.readouterr().err
    assert f"tensor '{name}' holds NaN/Inf values" in err and "model.safetensors" in err


def test_repeated_labels_are_scored_once_and_the_scores_are_explained(llm_checkpoint, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert _predict(llm_checkpoint, IMAGE, "a dog, a red car,a dog,a red car,a cat") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["softmax", "sigmoid", "label"]
    table = [line.split(None, 2) for line in lines[1:4]]
    assert sorted(label for _, _, label in table) == ["a cat", "a dog", "a red car"]
    softmax = [float(p) for p, _, _ in table]
    assert softmax == sorted(softmax, reverse=True) and sum(softmax) == pytest.approx(1.0, abs=1e-3)
    assert len(lines) == 5 and lines[4].startswith("softmax: probability among these labels") and "sigmoid: " in lines[4]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["--labels: 'a dog', 'a red car' given more than once; each is scored once"]

    assert _predict(llm_checkpoint, IMAGE, "a dog,a dog", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["label"] for row in result["scores"]] == ["a dog"]
    assert set(result["legend"]) == {"softmax", "sigmoid", "logit"}
