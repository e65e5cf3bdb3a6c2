"""FlameModel: image tower shapes and features (the paper profile's projector too),
save/load round trip, preprocessing, optimizer groups and schedule, and the text-encoder
fingerprint guard."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import flame.model
from flame.config import load_config, repo_root
from flame.errors import FlameError
from flame.model import FlameModel, ModelConfig
from flame.model.image_tower import ImageTower
from flame.text_modes.frozen_llm import check_text_fingerprint
from flame.train.optim import build_optimizer, warmup_cosine
from tests.fixtures.train import tiny_train_config

D = 24


@pytest.fixture(scope="module")
def config():
    return tiny_train_config()


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return FlameModel(ModelConfig(embed_dim=D, image=config.image, text=config.text.model_dump(mode="json"),
                                  text_fingerprint="fp-a"))


def test_encode_image_is_normalised_with_llm_width(model):
    out = model.encode_image(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, D)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_image_tower_drops_prefix_tokens_and_pools_patches(model):
    # 32 px / patch 8 = 16 patch tokens + 1 class token.
    tokens = model.visual.backbone.forward_features(torch.randn(1, 3, 32, 32))
    assert tokens.shape[1] == 17 and model.visual.num_prefix_tokens == 1


def test_backbone_features_are_the_pooled_patch_tokens_before_the_projector(model):
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.encode_image_backbone(pixels)
        patches = model.visual.backbone.forward_features(pixels)[:, 1:]
        embedding = model.encode_image(pixels)
    assert features.shape == (3, model.visual.width) == (3, 192)
    torch.testing.assert_close(features, patches.mean(dim=1))
    torch.testing.assert_close(embedding, F.normalize(model.visual.projector(patches).mean(dim=1), dim=-1))


def test_paper_profile_projector_is_the_references():
    """ViT-B/16's width 768 -> 5120 -> GELU -> 5120 -> LayerNorm(5120): the reference's
    _build_mm_projector for Mistral-Nemo's hidden size 5120 (hidden width max(5120, 4096))."""
    image = load_config(profile="paper").image.model_copy(update={"pretrained": False})
    assert image.projector_hidden == 5120
    with torch.device("meta"):  # shapes only: no need to initialise ~120M parameters
        tower = ImageTower(image, embed_dim=5120)
    assert tower.width == 768
    assert [type(layer) for layer in tower.projector] == [nn.Linear, nn.GELU, nn.Linear, nn.LayerNorm]
    first, gelu, second, norm = tower.projector
    assert (first.in_features, first.out_features, first.bias is not None) == (768, 5120, True)
    assert gelu.approximate == "none"
    assert (second.in_features, second.out_features, second.bias is not None) == (5120, 5120, True)
    assert norm.normalized_shape == (5120,) and norm.elementwise_affine


def test_logit_parameters_start_at_paper_values(model):
    assert model.logit_scale.exp().item() == pytest.approx(10.0)
    assert model.logit_bias.item() == pytest.approx(-10.0)


def test_save_load_round_trip(model, tmp_path):
    model.eval()
    pixels = torch.randn(2, 3, 32, 32)
    expected = model.encode_image(pixels)
    model.save(tmp_path, counters={"trained_steps": 3})
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "model_config.json"}
    loaded = flame.model.load(tmp_path)
    torch.testing.assert_close(loaded.encode_image(pixels), expected)
    assert loaded.text_fingerprint == "fp-a"
    assert loaded.text_mode == "flame"
    assert loaded.text_config["llm"] == model.text_config["llm"]
    assert json.loads((tmp_path / "model_config.json").read_text())["trained_steps"] == 3


def test_model_config_json_is_the_model_config_with_its_format_version_and_counters(model, tmp_path):
    model.save(tmp_path, counters={"trained_steps": 3, "trained_epochs": 1, "embedding_store": "store-fp"})
    record = json.loads((tmp_path / "model_config.json").read_text())
    # the keys model_config.json has always had, so that older and newer readers agree
    assert set(record) == {"format_version", "embed_dim", "image", "text_mode", "text_encoder", "text_fingerprint",
                           "text", "trained_steps", "trained_epochs", "embedding_store"}
    assert record["text_encoder"] == model.config.text["llm"] and record["format_version"] == 1
    assert flame.model.read_config(tmp_path) == model.config
    with pytest.raises(ValueError, match="not a counter of model_config.json: \\['steps'\\]"):
        model.save(tmp_path, counters={"steps": 3})


def test_a_bad_model_config_is_refused_naming_the_file_and_the_keys(model, tmp_path):
    model.save(tmp_path)
    path = tmp_path / "model_config.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "embed_dim": "wide", "text_mode": "bert"}))
    with pytest.raises(FlameError, match=rf"{path}: bad model config \(embed_dim: .*; text_mode: .*unknown text mode 'bert'"):
        flame.model.load(tmp_path)
    del record["image"]
    path.write_text(json.dumps(record))
    with pytest.raises(FlameError, match=r"bad model config \(image: Field required\)"):
        flame.model.read_config(tmp_path)


def test_load_refuses_missing_or_corrupt_checkpoint(model, tmp_path):
    with pytest.raises(FlameError, match="model_config.json is missing"):
        flame.model.load(tmp_path)
    model.save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x02 not safetensors")
    with pytest.raises(FlameError, match="not a readable safetensors"):
        flame.model.load(tmp_path)


def test_preprocess_gives_square_normalised_tensor(model):
    image = Image.open(next((repo_root() / "data" / "sample" / "images").glob("*.jpg")))
    pixels = model.preprocess(image)
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == torch.float32 and pixels.min() < 0 < pixels.max()


def test_fingerprint_mismatch_is_refused_with_reason():
    check_text_fingerprint("fp-a", "fp-a", "x")
    with pytest.raises(FlameError, match="trained against fp-a.*has fp-b"):
        check_text_fingerprint("fp-a", "fp-b", "the configured text encoder")


def test_unknown_facet_set_is_a_clear_error(model):
    with pytest.raises(FlameError, match="facet set 'nope' unknown"):
        model.encode_text(["a dog"], facet_set="nope")


def test_no_weight_decay_on_norms_biases_and_logit_parameters(model, config):
    groups = build_optimizer(model, config.train).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == config.train.weight_decay and groups[1]["weight_decay"] == 0.0
    for name, param in model.named_parameters():
        expect = param.ndim >= 2 and "logit_" not in name
        assert (id(param) in decayed) == expect, name
    assert groups[0]["betas"] == (0.9, 0.95) and groups[0]["eps"] == 1e-8


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 4, 20, 0.0) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)
    mid = warmup_cosine(8, 4, 20, 0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_pretrained_without_local_weights_is_a_clear_error(config):
    image = config.image.model_copy(update={"pretrained": True, "model": "vit_tiny_patch16_224"})
    with pytest.raises(FlameError, match="no local timm weights for 'vit_tiny_patch16_224'.*pretrained=false"):
        FlameModel(ModelConfig(embed_dim=D, image=image, text=config.text.model_dump(mode="json")))
