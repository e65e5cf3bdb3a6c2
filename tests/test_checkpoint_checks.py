"""Loading a checkpoint checks what it holds: every tensor finite, the folder present."""

from __future__ import annotations

import pytest
import torch

import flame.model
from flame import checkpoint
from flame.errors import FlameError
from flame.model import FlameModel, ModelConfig
from tests.fixtures.train import tiny_train_config


@pytest.fixture
def model():
    config = tiny_train_config()
    torch.manual_seed(0)
    return FlameModel(ModelConfig(embed_dim=24, image=config.image, text=config.text.model_dump(mode="json"),
                                  text_fingerprint="fp-a"))


def test_a_tensor_holding_inf_is_named(model, tmp_path):
    with torch.no_grad():
        model.logit_bias.fill_(float("-inf"))
    model.save(tmp_path)
    with pytest.raises(FlameError, match=r"model.safetensors: tensor 'logit_bias' holds NaN/Inf values; the checkpoint is corrupt"):
        flame.model.load(tmp_path)
    with pytest.raises(FlameError, match="tensor 'logit_bias'"):
        checkpoint.read_model_weights(tmp_path)


def test_a_finite_checkpoint_loads_and_a_missing_folder_is_named(model, tmp_path):
    model.save(tmp_path / "ok")
    assert flame.model.load(tmp_path / "ok" / "model.safetensors").embed_dim == 24
    with pytest.raises(FlameError, match=f"checkpoint folder not found: {tmp_path / 'nope'}$"):
        flame.model.load(tmp_path / "nope")
