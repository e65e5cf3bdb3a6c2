"""Multi-positive losses: values against a direct per-pair computation, and a 2-process
gloo run that must give the single-process loss and gradients on the same global batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flame.losses import get_loss, multi_positive_infonce_loss, multi_positive_sigmoid_loss


def _features(b=5, m=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    texts = F.normalize(torch.randn(b, m, d, generator=g), dim=-1)
    return images, texts


def test_sigmoid_loss_equals_per_pair_sum():
    images, texts = _features()
    b, m, _ = texts.shape
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    expected = 0.0
    for i in range(b):
        for j in range(b):
            for k in range(m):
                logit = 10.0 * float(images[i] @ texts[j, k]) - 10.0
                label = 1.0 if i == j else -1.0
                expected += -math.log(1.0 / (1.0 + math.exp(-label * logit)))
    got = multi_positive_sigmoid_loss(images, texts, scale, bias)
    assert got.item() == pytest.approx(expected / b, rel=1e-5)


def test_infonce_loss_equals_direct_formula():
    images, texts = _features()
    b, m, _ = texts.shape
    scale = torch.tensor(math.log(7.0))
    flat = texts.reshape(b * m, -1)
    i2t, t2i = 0.0, 0.0
    for i in range(b):
        logits = 7.0 * (flat @ images[i])
        log_p = logits.log_softmax(0)
        i2t += -sum(float(log_p[i * m + k]) for k in range(m)) / m
    for t in range(b * m):
        t2i += -float((7.0 * (images @ flat[t])).log_softmax(0)[t // m])
    expected = (i2t + t2i / m) / (2 * b)
    assert multi_positive_infonce_loss(images, texts, scale).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["sigmoid", "infonce"])
def test_loss_is_lower_when_images_match_their_texts(name):
    images, texts = _features(b=6, m=2)
    matched = F.normalize(texts.mean(dim=1), dim=-1)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-5.0)
    loss = get_loss(name)
    assert loss(matched, texts, scale, bias) < loss(images, texts, scale, bias)


# ---- 2-process gloo against 1 process -----------------------------------------------

GLOBAL_B, M, IN_DIM, D = 8, 3, 12, 10
LOSS_NAMES = ("sigmoid", "infonce")


class _Towers(torch.nn.Module):
    """Image and text projections; the logit scale/bias live here but are used only in
    the loss, outside forward, as in the training loop."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(IN_DIM, D)
        self.text = torch.nn.Linear(IN_DIM, D)  # trainable, so the gather's backward matters
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))

    def forward(self, x_img, x_txt):
        return F.normalize(self.image(x_img), dim=-1), F.normalize(self.text(x_txt), dim=-1)


def _setup_and_data(name):
    torch.manual_seed(0)
    towers = _Towers()
    # InfoNCE ignores the bias; DDP needs every trainable parameter to get a gradient.
    towers.logit_bias.requires_grad_(name == "sigmoid")
    g = torch.Generator().manual_seed(1)
    return towers, torch.randn(GLOBAL_B, IN_DIM, generator=g), torch.randn(GLOBAL_B, M, IN_DIM, generator=g)


def _worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name in LOSS_NAMES:
            towers, x_img, x_txt = _setup_and_data(name)
            ddp = torch.nn.parallel.DistributedDataParallel(towers)
            local = GLOBAL_B // world
            sl = slice(rank * local, (rank + 1) * local)
            images, texts = ddp(x_img[sl], x_txt[sl])
            loss = get_loss(name)(images, texts, towers.logit_scale, towers.logit_bias)
            loss.backward()  # DDP averages the gradients over the ranks
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            grads = {n: p.grad for n, p in towers.named_parameters() if p.grad is not None}
            results[name] = {"loss": mean_loss / world, "grads": grads}
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
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_two_process_gloo_matches_one_process(name, two_process_results):
    ddp = two_process_results[name]
    towers, x_img, x_txt = _setup_and_data(name)
    images, texts = towers(x_img, x_txt)
    loss = get_loss(name)(images, texts, towers.logit_scale, towers.logit_bias)
    loss.backward()

    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert set(ddp["grads"]) == {n for n, p in towers.named_parameters() if p.requires_grad}
    for pname, param in towers.named_parameters():
        if not param.requires_grad:
            continue
        torch.testing.assert_close(ddp["grads"][pname], param.grad, rtol=1e-4, atol=1e-6, msg=pname)
