"""Multi-positive losses: values against a loop-by-loop restatement of the reference's
formulas, the logit init per loss, and a 2-process gloo run that must give the
single-process loss and gradients on the same global batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flame.config import load_config, reference_logit_init
from flame.model import FlameModel, ModelConfig
from flame.train.distributed import DistContext
from flame.train.losses import get_loss, multi_positive_infonce_loss, multi_positive_sigmoid_loss
from tests.fixtures.train import tiny_train_config


ONE_PROCESS = DistContext()


def _features(b=5, m=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    texts = F.normalize(torch.randn(b, m, d, generator=g), dim=-1)
    return images, texts


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def _reference_sigmoid_loss(images, texts, scale: float, bias: float, rows: range | None = None) -> float:
    """The reference's MultiPositiveSigmoidLoss, pair by pair: the images of ``rows`` (a
    rank's local images; default all) against every text, an image's own m texts labelled
    +1; the sum divided by the local text count, ``len(rows) * m``."""
    n, m, _ = texts.shape
    rows = range(n) if rows is None else rows
    total = 0.0
    for i in rows:
        for k in range(n):
            for j in range(m):
                label = 1.0 if i == k else -1.0
                logit = scale * _dot(images[i], texts[k, j]) + bias
                total += math.log1p(math.exp(-label * logit))  # -log sigmoid(label * logit)
    return total / (len(rows) * m)


def _cross_entropy(logits: list[float], target: int) -> float:
    top = max(logits)
    return top + math.log(sum(math.exp(x - top) for x in logits)) - logits[target]


def _reference_infonce_loss(images, texts, scale: float) -> float:
    """The reference's MultiPositiveNCELoss on one process, row by row. Image -> text: for
    each positive slot j, every image's softmax over the j-th texts of all images, averaged
    over the m*N rows; text -> image: every text's softmax over the images, averaged over
    its N*m rows; the loss is the mean of the two."""
    n, m, _ = texts.shape
    image_to_text = sum(
        _cross_entropy([scale * _dot(images[i], texts[k, j]) for k in range(n)], i)
        for j in range(m) for i in range(n)
    ) / (m * n)
    text_to_image = sum(
        _cross_entropy([scale * _dot(texts[i, j], images[k]) for k in range(n)], i)
        for i in range(n) for j in range(m)
    ) / (n * m)
    return (image_to_text + text_to_image) / 2


@pytest.mark.parametrize("b, m", [(5, 3), (4, 1), (3, 6)])
def test_sigmoid_loss_equals_the_references_formula(b, m):
    images, texts = _features(b=b, m=m)
    got = multi_positive_sigmoid_loss(images, texts, torch.tensor(math.log(10.0)), torch.tensor(-10.0), ctx=ONE_PROCESS)
    assert got.item() == pytest.approx(_reference_sigmoid_loss(images, texts, 10.0, -10.0), rel=1e-5)


@pytest.mark.parametrize("b, m", [(5, 3), (4, 1), (3, 6)])
def test_infonce_loss_equals_the_references_formula(b, m):
    images, texts = _features(b=b, m=m)
    bias = torch.tensor(-3.0)  # ignored: a bias cancels in a softmax
    got = multi_positive_infonce_loss(images, texts, torch.tensor(math.log(7.0)), bias, ctx=ONE_PROCESS)
    assert got.item() == pytest.approx(_reference_infonce_loss(images, texts, 7.0), rel=1e-5)


def test_infonce_with_one_positive_is_clips_loss():
    images, texts = _features(b=6, m=1)
    logits = 7.0 * images @ texts[:, 0].T
    targets = torch.arange(6)
    clip = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    got = multi_positive_infonce_loss(images, texts, torch.tensor(math.log(7.0)), ctx=ONE_PROCESS)
    assert got.item() == pytest.approx(clip.item(), rel=1e-6)


@pytest.mark.parametrize("loss, scale, bias", [("sigmoid", 10.0, -10.0), ("infonce", 1 / 0.07, 0.0)])
def test_logit_init_defaults_to_the_references_value_for_the_loss(loss, scale, bias):
    train = load_config(profile="tiny", overrides={"train": {"loss": loss}}).train
    assert (train.logit_scale_init, train.logit_bias_init) == pytest.approx((scale, bias))
    assert reference_logit_init(loss) == pytest.approx((scale, bias))
    model = FlameModel(ModelConfig(embed_dim=8, image=tiny_train_config().image, text={}),
                       logit_scale_init=train.logit_scale_init, logit_bias_init=train.logit_bias_init)
    assert model.logit_scale.exp().item() == pytest.approx(scale, rel=1e-6)
    assert model.logit_bias.item() == pytest.approx(bias)


def test_a_configured_logit_init_is_kept():
    train = load_config(profile="tiny", overrides={"train": {"loss": "infonce", "logit_scale_init": 5.0,
                                                             "logit_bias_init": -2.0}}).train
    assert (train.logit_scale_init, train.logit_bias_init) == (5.0, -2.0)


@pytest.mark.parametrize("name", ["sigmoid", "infonce"])
def test_loss_is_lower_when_images_match_their_texts(name):
    images, texts = _features(b=6, m=2)
    matched = F.normalize(texts.mean(dim=1), dim=-1)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-5.0)
    loss = get_loss(name)
    assert loss(matched, texts, scale, bias, ctx=ONE_PROCESS) < loss(images, texts, scale, bias, ctx=ONE_PROCESS)


# ---- 2-process gloo against 1 process -----------------------------------------------

GLOBAL_B, M, IN_DIM, D = 8, 3, 12, 10
LOSS_NAMES = ("sigmoid", "infonce")
# (loss, texts trainable): trainable as in the CLIP baseline, frozen as the stored LLM embeddings.
CASES = [(name, trainable) for name in LOSS_NAMES for trainable in (True, False)]


class _Towers(torch.nn.Module):
    """Image and text projections; the logit scale/bias live here but are used only in
    the loss, outside forward, as in the training loop."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(IN_DIM, D)
        self.text = torch.nn.Linear(IN_DIM, D)  # when trainable, the gather's backward matters
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))

    def forward(self, x_img, x_txt):
        return F.normalize(self.image(x_img), dim=-1), F.normalize(self.text(x_txt), dim=-1)


def _setup_and_data(name, texts_trainable=True):
    torch.manual_seed(0)
    towers = _Towers()
    # InfoNCE ignores the bias; DDP needs every trainable parameter to get a gradient.
    towers.logit_bias.requires_grad_(name == "sigmoid")
    towers.text.requires_grad_(texts_trainable)
    g = torch.Generator().manual_seed(1)
    return towers, torch.randn(GLOBAL_B, IN_DIM, generator=g), torch.randn(GLOBAL_B, M, IN_DIM, generator=g)


def _worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world)
    try:
        results = {}
        for name, texts_trainable in CASES:
            towers, x_img, x_txt = _setup_and_data(name, texts_trainable)
            ddp = torch.nn.parallel.DistributedDataParallel(towers)
            local = GLOBAL_B // world
            sl = slice(rank * local, (rank + 1) * local)
            images, texts = ddp(x_img[sl], x_txt[sl])
            loss = get_loss(name)(images, texts, towers.logit_scale, towers.logit_bias, ctx=ctx)
            loss.backward()  # DDP averages the gradients over the ranks
            rank_losses = [torch.zeros(()) for _ in range(world)]
            dist.all_gather(rank_losses, loss.detach())
            grads = {n: p.grad for n, p in towers.named_parameters() if p.grad is not None}
            results[name, texts_trainable] = {"loss": torch.stack(rank_losses).mean(), "rank_losses": rank_losses, "grads": grads}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """Loss and gradients of a 2-process gloo DDP run, each rank holding half the batch."""
    out = tmp_path_factory.mktemp("ddp") / "ddp.pt"
    # fork: the children reuse the imported torch instead of importing it again (CPU only).
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="fork")
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name, texts_trainable", CASES)
def test_two_process_gloo_matches_one_process(name, texts_trainable, two_process_results):
    ddp = two_process_results[name, texts_trainable]
    towers, x_img, x_txt = _setup_and_data(name, texts_trainable)
    images, texts = towers(x_img, x_txt)
    loss = get_loss(name)(images, texts, towers.logit_scale, towers.logit_bias, ctx=ONE_PROCESS)
    loss.backward()

    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert set(ddp["grads"]) == {n for n, p in towers.named_parameters() if p.requires_grad}
    for pname, param in towers.named_parameters():
        if not param.requires_grad:
            continue
        torch.testing.assert_close(ddp["grads"][pname], param.grad, rtol=1e-4, atol=1e-6, msg=pname)


@pytest.mark.slow
def test_each_ranks_sigmoid_loss_is_the_references_per_rank_value(two_process_results):
    """The reference's rank: its images against its own texts plus, negative-only, every other
    rank's texts, all divided by its local text count."""
    towers, x_img, x_txt = _setup_and_data("sigmoid")
    with torch.no_grad():
        images, texts = towers(x_img, x_txt)
    local = GLOBAL_B // 2
    for rank, got in enumerate(two_process_results["sigmoid", True]["rank_losses"]):
        rows = range(rank * local, (rank + 1) * local)
        expected = _reference_sigmoid_loss(images, texts, 10.0, -10.0, rows)
        assert got.item() == pytest.approx(expected, rel=1e-5), rank
