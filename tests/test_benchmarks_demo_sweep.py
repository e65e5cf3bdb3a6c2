"""benchmarks/demo_sweep.py: the runs' configurations and the table, without downloading, embedding or training."""

from __future__ import annotations

import json

import pytest

from benchmarks import demo_sweep as ds
from flame.config import load_config

# The configuration columns of the sweep's table, per run in RUNS order (blocks / tokens, texts (K), loss and
# logit-scale init, epochs, crop, m, seed).
RAW_SHORT, FIVE_RAW, NCE = "1 caption x raw+short (4)", "5 captions x raw (5)", "infonce, scale 1/0.07"
EXPECTED = [
    ("12 / 64", RAW_SHORT, "sigmoid, scale 10", 6, "0.9-1", 2, 0),
    ("6 / 16", RAW_SHORT, "sigmoid, scale 10", 30, "0.5-1", 2, 0),
    ("6 / 16", RAW_SHORT, NCE, 20, "0.5-1", 2, 0),
    ("6 / 16", RAW_SHORT, "sigmoid, scale 100", 20, "0.5-1", 2, 0),
    ("6 / 16", RAW_SHORT, "infonce, scale 100", 20, "0.5-1", 2, 0),
    ("6 / 16", FIVE_RAW, NCE, 20, "0.5-1", 2, 0),
    ("6 / 16", FIVE_RAW, NCE, 20, "0.5-1", 5, 0),
    ("6 / 16", RAW_SHORT, NCE, 40, "0.5-1", 2, 0),
    ("6 / 16", RAW_SHORT, NCE, 20, "0.5-1", 2, 1),
    ("6 / 16", RAW_SHORT, "sigmoid, scale 100", 40, "0.5-1", 2, 0),
    *[("6 / 16", FIVE_RAW, NCE, 30, "0.5-1", m, s) for s in (0, 1, 2) for m in (2, 5)],
]


def resolve(name):
    return load_config(ds.ROOT / "params.yaml", "tiny", overrides=ds.RUNS[name])


def test_every_run_resolves_to_its_row_of_the_table():
    assert len(ds.RUNS) == len(EXPECTED) == 16
    for name, row in zip(ds.RUNS, EXPECTED):
        assert tuple(ds.describe(resolve(name)).values()) == row, name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_chosen_m2_runs_are_the_tiny_profile(seed):
    assert ds.RUNS[f"chosen-m2-s{seed}"] == {"train": {"seed": seed}}
    tiny = load_config(ds.ROOT / "params.yaml", "tiny", overrides={"train": {"seed": seed}})
    assert resolve(f"chosen-m2-s{seed}") == tiny


def test_one_embedding_store_per_text_configuration():
    keys = {ds.text_key(resolve(name)) for name in ds.RUNS}
    assert len(keys) == 2
    assert ds.text_key(resolve("nce-e20")) == ds.text_key(resolve("old-tower"))
    assert ds.text_key(resolve("nce-5captions-m2-e20")) == ds.text_key(resolve("chosen-m5-s2"))


def test_markdown_row():
    record = {"name": "nce-e20", "columns": ds.describe(resolve("nce-e20")), "mean_recall@1": 0.02832,
              "mean_recall@5": 0.15044, "recall@1_over_chance": 3.2, "recall@5_over_chance": 3.42,
              "protocols": {"raw": {"recall@1_over_chance": 2.04, "recall@5_over_chance": 3.0}}}
    table = ds.markdown([record], ["raw"]).splitlines()
    assert table[0].startswith("| # | blocks / tokens | texts (K) |") and table[0].endswith("retrieval raw |")
    assert table[2] == ("| 3 | 6 / 16 | 1 caption x raw+short (4) | infonce, scale 1/0.07 | 20 | 0.5-1 | 2 | 0 "
                        "| 0.0283 | 0.1504 | 3.2x | 3.42x | 2.0x / 3.00x |")


def test_dry_run_runs_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ds, "flame_cli", lambda *a: pytest.fail(f"ran flame {a}"))
    out = tmp_path / "results.json"
    assert ds.main(["--dry-run", "--work", str(tmp_path / "work"), "--out", str(out), "--runs", "nce-e20,chosen-m2-s0",
                    "--protocols", "raw"]) is None
    assert list(tmp_path.iterdir()) == []
    printed = capsys.readouterr().out
    assert printed.count("+ flame embed") == 2 and printed.count("+ flame train") == 2
    assert printed.count("+ flame evaluate") == 4 and "--profile chosen-m2-s0-raw" in printed
    profiles = json.loads(printed.split("chosen-m2-s0.yaml: profiles ")[1].splitlines()[0])
    assert profiles["chosen-m2-s0"] == {"extends": "tiny", "train": {"seed": 0}}
