"""The registry gate against a real `mlflow server`: both models scored on one eval set, the
decision and its numbers recorded on the versions, one registration per training, manual
promotion, rollback after an alias moved by hand, the CLI, two registrations racing in two
processes, and the compare-and-set that moves ``champion`` racing in two processes."""

import json
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from mlflow import MlflowClient

from evaluations import paired
from flame.app import promotion as gate
from flame.app.promotion import beats, gate_challenger, register_and_gate
from flame.config import ConfigError, load_config
from flame.errors import FlameError
from flame.mlflow import registry as registry_module
from flame.mlflow.pyfunc import log_flame_model
from flame.mlflow.registry import Registry
from flame.mlflow.tracker import MlflowTracker

LIMIT = 6  # the first 6 sample-dev images and their 30 captions (texts cached by the session)
# What a pipeline run gives a version: the git commit and the DVC hashes of its data.
LINEAGE = {"git.commit": "0123abcd" * 5, "dvc.data/training_sets": "c0ffee00" * 4 + ".dir"}


def _config(mlflow_server, **registry):
    tag = uuid.uuid4().hex[:8]
    return load_config(profile="tiny", overrides={
        "tracking": {"tracking_uri": mlflow_server, "experiment": f"test-{tag}"},
        "registry": {"model_name": f"flame-test-{tag}", **registry},
    })


def _client(config):
    return MlflowClient(tracking_uri=config.tracking.tracking_uri, registry_uri=config.tracking.tracking_uri)


def _not_a_model(config, tmp_path) -> dict:
    """A run artifact folder that holds no checkpoint: ``Registry.register`` keywords for it."""
    folder = tmp_path / f"not-a-model-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "weights.txt").write_text("not a checkpoint")
    with MlflowTracker(config) as tracker:
        tracker.log_artifact(folder, "model")
    return {"model_uri": f"{tracker.client.get_run(tracker.run_id).info.artifact_uri}/model", "run_id": tracker.run_id}


def _aliases(config):
    return _show(config)["aliases"]


def _show(config):
    return Registry.open(config).show()


def _register(config, model_uri, run_id=None, training_id=None):
    unique = {gate.TAG_TRAINING_ID: training_id} if training_id else None
    return Registry.open(config).register(model_uri, run_id=run_id, unique=unique)


@pytest.fixture(scope="module")
def gated(mlflow_server, eval_checkpoint, eval_text_cache):
    """A registry where v1 (first version) and v2 (the same checkpoint) went through the gate."""
    config = _config(mlflow_server)
    model_uri = log_flame_model(config, eval_checkpoint)
    first = register_and_gate(config, model_uri, checkpoint_dir=eval_checkpoint, training_id="train-1", limit=LIMIT,
                              lineage=LINEAGE)
    second = register_and_gate(config, model_uri, checkpoint_dir=eval_checkpoint, training_id="train-2", limit=LIMIT)
    return config, model_uri, first, second


@pytest.mark.slow
def test_the_first_version_is_champion_by_default_and_scored(gated):
    config, _, first, _ = gated
    fingerprint = paired.eval_set_fingerprint(config, limit=LIMIT)
    assert (first.version, first.promoted, first.decision, first.eval_set) == ("1", True, "first-version", fingerprint)
    assert 0 < first.candidate_value < 1 and first.champion_version is None and first.aliases == ["challenger", "champion"]
    v1 = _client(config).get_model_version(config.registry.model_name, "1")
    assert v1.tags[gate.TAG_DECISION] == "first-version" and v1.tags[gate.TAG_TRAINING_ID] == "train-1"
    assert v1.tags[gate.TAG_EVAL_SET] == fingerprint and v1.tags[gate.TAG_PROFILE] == "tiny"
    assert float(v1.tags[gate.score_tag(fingerprint)]) == first.candidate_value
    assert "first version" in v1.description


@pytest.mark.slow
def test_an_identical_challenger_is_not_promoted_and_both_scores_are_recorded(gated):
    config, _, first, second = gated
    reg = config.registry
    assert (second.version, second.promoted, second.decision, second.champion_version) == ("2", False, "rejected", "1")
    assert second.candidate_value == second.champion_value == first.candidate_value
    assert (second.diff, second.ci_low, second.ci_high) == (0.0, 0.0, 0.0)
    assert (second.confidence, second.bootstrap_samples, second.margin) == (reg.confidence, reg.bootstrap_samples, reg.margin)
    assert second.n_queries == 6 * LIMIT  # 30 captions (text->image) + 6 images (image->text)
    assert second.aliases == ["challenger"]
    assert _aliases(config) == {"champion": "1", "challenger": "2"}

    client = _client(config)
    v2 = client.get_model_version(reg.model_name, "2")
    tags = v2.tags
    assert tags[gate.TAG_DECISION] == "rejected" and tags[gate.TAG_CHAMPION_VERSION] == "1"
    assert float(tags[gate.TAG_CHALLENGER_SCORE]) == float(tags[gate.TAG_CHAMPION_SCORE]) == second.candidate_value
    assert (float(tags[gate.TAG_DIFF]), float(tags[gate.TAG_CI_LOW]), float(tags[gate.TAG_CI_HIGH])) == (0.0, 0.0, 0.0)
    assert float(tags[gate.TAG_CONFIDENCE]) == reg.confidence and int(tags[gate.TAG_BOOTSTRAP_SAMPLES]) == reg.bootstrap_samples
    assert int(tags[gate.TAG_N_QUERIES]) == 6 * LIMIT and float(tags[gate.TAG_MARGIN]) == reg.margin
    assert tags[gate.TAG_GATE_METRIC] == reg.gate_metric and tags[gate.TAG_EVAL_SET] == second.eval_set
    assert tags[gate.TAG_REASON] == v2.description == second.reason
    assert "not promoted" in second.reason and "interval does not exclude 0" in second.reason
    # The champion was scored on the same eval set, and carries that score too.
    v1 = client.get_model_version(reg.model_name, "1")
    assert float(v1.tags[gate.score_tag(second.eval_set)]) == second.champion_value
    assert float(tags[gate.score_tag(second.eval_set)]) == second.candidate_value


@pytest.mark.slow
def test_the_same_training_is_registered_once(gated, eval_checkpoint):
    config, model_uri, _, _ = gated
    again = register_and_gate(config, model_uri, checkpoint_dir=eval_checkpoint, training_id="train-2", limit=LIMIT)
    assert (again.version, again.decision, again.promoted, again.aliases) == ("2", "already-registered", False, ["challenger"])
    registry = Registry.open(config)
    existing = registry.find({gate.TAG_TRAINING_ID: "train-2"})
    assert (str(existing.version), existing.source) == ("2", model_uri)
    assert registry.find({gate.TAG_TRAINING_ID: "never-trained"}) is None
    assert [v["version"] for v in registry.show()["versions"]] == ["1", "2"]


@pytest.mark.slow
def test_gate_challenger_scores_the_registered_challenger_again(gated):
    config, _, _, second = gated
    again = gate_challenger(config, limit=LIMIT)
    assert (again.version, again.decision, again.candidate_value, again.champion_value) == (
        "2", "rejected", second.candidate_value, second.champion_value)
    assert _aliases(config) == {"champion": "1", "challenger": "2"}


@pytest.mark.slow
def test_cli_show_lists_versions_with_aliases_and_decisions(gated):
    config, _, _, second = gated
    where = ["--tracking-uri", config.tracking.tracking_uri, "--model-name", config.registry.model_name]

    def flame(*args):
        return subprocess.run([sys.executable, "-m", "flame", "registry", *args, *where],
                              capture_output=True, text=True, timeout=300)

    proc = flame("show", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["aliases"] == {"champion": "1", "challenger": "2"} and shown["champion_history"] == ["1"]
    assert [(v["version"], v["aliases"], v["decision"]) for v in shown["versions"]] == [
        ("1", ["champion"], "first-version"), ("2", ["challenger"], "rejected")]
    assert (shown["versions"][0]["git_commit"], shown["versions"][0]["data_versions"]) == (
        LINEAGE["git.commit"], {"data/training_sets": LINEAGE["dvc.data/training_sets"]})
    assert (shown["versions"][1]["git_commit"], shown["versions"][1]["data_versions"]) == (None, {})
    assert shown["versions"][1]["tags"][gate.TAG_CI_LOW] == "0.0"
    table = flame("show")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("2 "))
    assert row.split()[:3] == ["2", "challenger", "rejected"]
    assert f"{second.champion_value:.4f} (v1)" in row and "+0.0000 [+0.0000, +0.0000]" in row

    promoted = flame("promote", "--limit", str(LIMIT))  # without --version: the gate, champion re-scored
    assert promoted.returncode == 0, promoted.stderr
    assert {k: json.loads(promoted.stdout)[k] for k in ("version", "decision", "champion_version")} == {
        "version": "2", "decision": "rejected", "champion_version": "1"}
    refused = flame("register", "--model-uri", "models:/m-x")
    assert refused.returncode == 2 and "needs --model-uri and --checkpoint" in refused.stderr


@pytest.mark.slow
def test_a_champion_without_a_checkpoint_is_kept_and_the_reason_says_why(mlflow_server, eval_checkpoint, eval_text_cache, tmp_path):
    config = _config(mlflow_server)
    version, created = _register(config, **_not_a_model(config, tmp_path))
    assert (version, created) == ("1", True)
    gate.promote(config, version)
    decision = register_and_gate(config, log_flame_model(config, eval_checkpoint), checkpoint_dir=eval_checkpoint, limit=LIMIT)
    assert (decision.version, decision.promoted, decision.decision) == ("2", False, "rejected")
    assert "champion v1 has no loadable checkpoint" in decision.reason
    assert _aliases(config) == {"champion": "1", "challenger": "2"}


@pytest.mark.slow
def test_rollback_follows_the_champion_history_even_after_an_alias_moved_by_hand(mlflow_server, tmp_path):
    config = _config(mlflow_server)
    name = config.registry.model_name
    source = _not_a_model(config, tmp_path)
    versions = [_register(config, **source)[0] for _ in range(4)]
    assert versions == ["1", "2", "3", "4"]
    assert gate.promote(config, 1).decision == "manual"
    manual = gate.promote(config, 2)
    assert (manual.decision, manual.champion_version, manual.aliases) == ("manual", "1", ["champion"])
    assert manual.reason == "promoted manually to champion (was v1)"
    with pytest.raises(FlameError, match=f"registered model '{name}' has no version 9"):
        gate.promote(config, 9)

    client = _client(config)
    client.set_registered_model_alias(name, "champion", "4")  # as someone does in the MLflow UI
    client.delete_model_version(name, "2")
    back = gate.rollback(config)
    assert back == {"model_name": name, "from_version": "4", "to_version": "1"}  # v2 is gone: the one before it
    assert _aliases(config)["champion"] == "1" and _show(config)["champion_history"] == ["1"]
    v4 = client.get_model_version(name, "4")
    assert v4.tags[gate.TAG_DECISION] == "rolled-back" and "returned from v4 to v1" in v4.description
    with pytest.raises(FlameError, match="no previous champion"):
        gate.rollback(config)

    client.set_registered_model_alias(name, "champion", "3")
    assert gate.rollback(config)["to_version"] == "1"
    # Nothing but the model is in the registry: no lock entry.
    assert [m.name for m in client.search_registered_models(f"name LIKE '{name}%'")] == [name]


@pytest.mark.slow
def test_a_decision_is_recorded_only_against_the_champion_it_was_scored_against(mlflow_server, tmp_path):
    config = _config(mlflow_server)
    name = config.registry.model_name
    source = _not_a_model(config, tmp_path)
    for _ in range(3):
        _register(config, **source)
    gate.promote(config, 1)
    won = gate.Decision(name, "3", True, "promoted", "promoted: test", config.registry.gate_metric, candidate_value=0.5,
                        champion_version="2", champion_value=0.25, eval_set="ab" * 32)
    registry = Registry.open(config)
    assert not gate.record(registry, won, expected_champion="2", scores={"3": 0.5, "2": 0.25})
    assert gate.TAG_DECISION not in _client(config).get_model_version(name, "3").tags
    assert gate.record(registry, won, expected_champion="1", scores={"3": 0.5, "1": 0.25})
    shown = registry.show()
    assert shown["aliases"] == {"champion": "3", "challenger": "3"} and shown["champion_history"] == ["1", "3"]
    assert shown["versions"][0]["tags"][gate.score_tag("ab" * 32)] == "0.25"
    assert shown["versions"][2]["tags"][gate.TAG_DECISION] == "promoted"


_RACER = textwrap.dedent("""
    import json, sys
    from flame.config import load_config
    from flame.app.promotion import register_and_gate
    uri, name, exp, model_uri, checkpoint, training_id, limit = sys.argv[1:8]
    cfg = load_config(overrides={"tracking": {"tracking_uri": uri, "experiment": exp},
                                 "registry": {"model_name": name}})
    decision = register_and_gate(cfg, model_uri, checkpoint_dir=checkpoint, training_id=training_id, limit=int(limit))
    print(json.dumps(decision.to_dict()))
""")


@pytest.mark.slow
def test_two_registrations_at_once_keep_the_registry_consistent(gated, eval_checkpoint):
    config, model_uri, _, _ = gated
    config = config.model_copy(update={"registry": config.registry.model_copy(update={"model_name": config.registry.model_name + "-race"})})
    register_and_gate(config, model_uri, checkpoint_dir=eval_checkpoint, limit=LIMIT)
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, config.tracking.tracking_uri, config.registry.model_name,
                          config.tracking.experiment, model_uri, str(eval_checkpoint), training_id, str(LIMIT)],
                         stdout=subprocess.PIPE, text=True)
        for training_id in ("race-a", "race-b")
    ]
    decisions = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(d["version"] for d in decisions) == ["2", "3"]
    assert all((d["decision"], d["champion_version"]) == ("rejected", "1") for d in decisions)
    shown = _show(config)
    assert shown["aliases"]["champion"] == "1" and shown["champion_history"] == ["1"]
    assert [v["tags"][gate.TAG_DECISION] for v in shown["versions"]] == ["first-version", "rejected", "rejected"]


_MOVER = textwrap.dedent("""
    import json, sys, time
    from flame.config import load_config
    from flame.mlflow.registry import Registry
    uri, name, to, start = sys.argv[1:5]
    registry = Registry.open(load_config(overrides={"tracking": {"tracking_uri": uri}, "registry": {"model_name": name}}))
    time.sleep(max(0.0, float(start) - time.time()))  # both processes move at the same moment
    print(json.dumps(registry.compare_and_set("champion", "1", to)))
""")


@pytest.mark.slow
def test_two_champion_moves_from_the_same_champion_at_once_let_exactly_one_through(mlflow_server, tmp_path):
    config = _config(mlflow_server)
    for _ in range(3):
        _register(config, **_not_a_model(config, tmp_path))
    assert Registry.open(config).compare_and_set("champion", None, "1")
    start = time.time() + 8  # after both have imported and connected
    procs = [subprocess.Popen([sys.executable, "-c", _MOVER, config.tracking.tracking_uri, config.registry.model_name,
                               to, str(start)], stdout=subprocess.PIPE, text=True) for to in ("2", "3")]
    moved = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted(moved) == [False, True]
    winner = ("2", "3")[moved.index(True)]
    shown = _show(config)
    assert shown["aliases"]["champion"] == winner and shown["champion_history"] == ["1", winner]


@pytest.mark.slow
def test_a_claim_left_by_a_killed_process_blocks_nothing(mlflow_server, tmp_path):
    config = _config(mlflow_server)
    registry = Registry.open(config)
    _register(config, **_not_a_model(config, tmp_path))
    registry.client.set_registered_model_tag(config.registry.model_name, registry_module.TAG_CLAIM,
                                             json.dumps({"alias": "champion", "from": None, "to": "9", "token": "dead"}))
    assert registry.compare_and_set("champion", None, "1") and registry.alias("champion") == "1"
    assert not registry.compare_and_set("champion", None, "1")  # no longer what it expects
    assert registry.compare_and_set("champion", "1", "1")  # nothing to move
    assert _show(config)["champion_history"] == ["1"]


def test_the_rule_needs_the_margin_and_an_interval_clear_of_zero():
    reg = load_config(profile="tiny").registry.model_copy(update={"margin": 0.01})
    assert beats(0.05, 0.01, 0.09, reg)
    assert not beats(0.05, -0.01, 0.11, reg)  # wins on average, but the interval reaches below 0
    assert not beats(0.005, 0.001, 0.009, reg)  # clear, but not by the margin
    lower = reg.model_copy(update={"higher_is_better": False})
    assert beats(-0.05, -0.09, -0.01, lower) and not beats(-0.05, -0.09, 0.01, lower) and not beats(0.05, 0.01, 0.09, lower)


def test_bootstrap_settings_are_validated_with_their_key():
    for key, bad in (("bootstrap_samples", 10), ("confidence", 1.0), ("confidence", 0.5), ("bootstrap_seed", -1)):
        with pytest.raises(ConfigError, match=f"registry.{key}"):
            load_config(profile="tiny", overrides={"registry": {key: bad}})
    reg = load_config(profile="tiny").registry
    assert (reg.bootstrap_samples, reg.confidence, reg.bootstrap_seed, reg.margin) == (1000, 0.95, 0, 0.0)
