"""The registry gate against a real `mlflow server`: challenger/champion, margin, rollback,
manual promotion, the CLI, and two registrations racing in two processes."""

import json
import subprocess
import sys
import textwrap

import pytest
from mlflow import MlflowClient

from flame.errors import FlameError
from flame.mlflow import gate as registry
from flame.mlflow.tracker import MlflowTracker

pytestmark = pytest.mark.slow


def _run_with_model(config, tmp_path, value):
    """A finished run with an evaluation metric and a model folder artifact; returns (run_id, uri)."""
    model_dir = tmp_path / f"model-{value}"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text(str(value))
    with MlflowTracker(config) as tracker:
        if value is not None:
            tracker.log_evaluation({config.registry.gate_metric: value})
        tracker.log_artifact(model_dir, "model")
    return tracker.run_id, f"{tracker.client.get_run(tracker.run_id).info.artifact_uri}/model"


def _aliases(config):
    return registry.show(config)["aliases"]


def test_gate_promotes_only_a_better_challenger_and_records_it(tracking_config, tmp_path):
    cfg = tracking_config
    name = cfg.registry.model_name

    d1 = registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.30)[::-1])
    assert (d1.version, d1.promoted, d1.decision) == ("1", True, "first-version")
    assert _aliases(cfg) == {"champion": "1", "challenger": "1"}
    again = registry.promote(cfg)  # gating the challenger that already is champion changes nothing
    assert again.decision == "already-champion"
    assert MlflowClient(tracking_uri=cfg.tracking.tracking_uri).get_model_version(
        cfg.registry.model_name, "1").tags["flame.decision"] == "first-version"

    d2 = registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.25)[::-1])
    assert (d2.promoted, d2.decision, d2.candidate_value, d2.champion_value) == (False, "rejected", 0.25, 0.30)
    assert _aliases(cfg) == {"champion": "1", "challenger": "2"}

    d3 = registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.40)[::-1])
    assert (d3.promoted, d3.decision, d3.champion_version) == (True, "promoted", "1")
    assert _aliases(cfg) == {"champion": "3", "challenger": "3"}

    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    v2 = client.get_model_version(name, "2")
    assert v2.tags["flame.decision"] == "rejected"
    assert float(v2.tags["flame.gate_value"]) == 0.25 and float(v2.tags["flame.champion_value"]) == 0.30
    assert "0.25" in v2.description and "0.3" in v2.description and "not promoted" in v2.description
    assert client.get_model_version(name, "3").tags["flame.previous_champion"] == "1"

    back = registry.rollback(cfg)
    assert back == {"model_name": name, "from_version": "3", "to_version": "1"}
    assert _aliases(cfg)["champion"] == "1"
    with pytest.raises(FlameError, match="no previous champion"):
        registry.rollback(cfg)

    manual = registry.promote(cfg, version=2)
    assert (manual.decision, _aliases(cfg)["champion"]) == ("manual", "2")
    with pytest.raises(FlameError, match="no version 9"):
        registry.promote(cfg, version=9)
    # No lock entry is left behind.
    assert [m.name for m in client.search_registered_models(f"name LIKE '{name}%'")] == [name]


def test_margin_and_lower_is_better(tracking_config, tmp_path):
    cfg = tracking_config.model_copy(update={"registry": tracking_config.registry.model_copy(
        update={"margin": 0.05, "higher_is_better": False})})
    registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 1.00)[::-1])
    assert not registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.97)[::-1]).promoted
    assert registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.90)[::-1]).promoted
    missing = registry.register_model(cfg, *_run_with_model(cfg, tmp_path, None)[::-1])
    assert not missing.promoted and "no value for gate metric" in missing.reason
    assert _aliases(cfg) == {"champion": "3", "challenger": "4"}


def test_cli_promote_and_show(tracking_config, tmp_path):
    cfg = tracking_config
    registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.5)[::-1])
    registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.4)[::-1])
    base = [sys.executable, "-m", "flame", "registry"]
    opts = ["--tracking-uri", cfg.tracking.tracking_uri, "--model-name", cfg.registry.model_name]

    def flame(*args):
        proc = subprocess.run(base + list(args) + opts, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr

    rc, out, _ = flame("promote", "--version", "2")
    assert rc == 0 and json.loads(out)["decision"] == "manual"
    assert registry.rollback(cfg)["to_version"] == "1"
    rc, out, _ = flame("show")
    shown = json.loads(out)
    assert shown["aliases"] == {"champion": "1", "challenger": "2"}
    assert [v["tags"]["flame.decision"] for v in shown["versions"]] == ["first-version", "rolled-back"]
    assert registry.promote(cfg).promoted is False  # the gate keeps v1 (0.5 > 0.4)
    with pytest.raises(FlameError, match="no registered model 'nope'"):
        registry.show(cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"model_name": "nope"})}))


_RACER = textwrap.dedent("""
    import json, sys
    from flame.config import load_config
    from flame.mlflow import gate as registry
    uri, name, exp, source, run_id = sys.argv[1:6]
    cfg = load_config(overrides={"tracking": {"tracking_uri": uri, "experiment": exp},
                                 "registry": {"model_name": name}})
    print(json.dumps(registry.register_model(cfg, source, run_id=run_id).to_dict()))
""")


def test_two_registrations_at_once_keep_the_registry_consistent(tracking_config, tmp_path):
    cfg = tracking_config
    registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.30)[::-1])
    runs = [_run_with_model(cfg, tmp_path, v) for v in (0.35, 0.45)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, cfg.tracking.tracking_uri, cfg.registry.model_name,
                          cfg.tracking.experiment, uri, run_id], stdout=subprocess.PIPE, text=True)
        for run_id, uri in runs
    ]
    decisions = [json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(d["version"] for d in decisions) == ["2", "3"]
    shown = registry.show(cfg)
    best = next(d["version"] for d in decisions if d["candidate_value"] == 0.45)
    assert shown["aliases"]["champion"] == best
    assert [v["version"] for v in shown["versions"]] == ["1", "2", "3"]
    assert all("flame.decision" in v["tags"] for v in shown["versions"])


def test_a_lock_left_by_a_crashed_process_is_broken_once_stale(tracking_config, tmp_path, monkeypatch):
    cfg = tracking_config
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    client.create_registered_model(f"{cfg.registry.model_name}.gate-lock")  # as a killed registrar leaves it
    monkeypatch.setattr(registry, "LOCK_STALE_S", 1.0)
    decision = registry.register_model(cfg, *_run_with_model(cfg, tmp_path, 0.3)[::-1])
    assert decision.decision == "first-version"
    assert [m.name for m in client.search_registered_models(f"name LIKE '{cfg.registry.model_name}%'")] == [
        cfg.registry.model_name]
