"""The promotion gate, decided and recorded here: a challenger and the current champion scored
in one process on the same eval set (``registry.gate_metric``), query by query, and compared
with a paired bootstrap. The challenger is promoted only if it wins by more than
``registry.margin`` and the lower bound of the difference's interval is above zero (mirrored
when lower is better). Manual promotion and rollback are decisions too, recorded the same way.

The registry (``flame.mlflow.registry``) is opened once per call and moves ``champion`` by
compare-and-set: a decision scored against a champion that has moved since is not recorded,
and the new champion is scored instead. Scoring goes through ``evaluations.paired``, the same
task code that produces the benchmark numbers.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluations.paired import Comparison, EvalSet, QueryHits, compare, load_eval_set, score_checkpoint
from flame import checkpoint
from flame.config import FlameConfig, RegistryConfig
from flame.errors import FlameError
from flame.mlflow.pyfunc import log_flame_model
from flame.mlflow.registry import CHALLENGER, CHAMPION, Registry

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5

# Version tags.
TAG_TRAINING_ID = "flame.training_id"
TAG_TRAINED_STEPS = "flame.trained_steps"
TAG_PROFILE = "flame.profile"
TAG_DECISION = "flame.decision"
TAG_REASON = "flame.reason"
TAG_GATE_METRIC = "flame.gate_metric"
TAG_CHALLENGER_SCORE = "flame.challenger_score"
TAG_CHAMPION_SCORE = "flame.champion_score"
TAG_CHAMPION_VERSION = "flame.champion_version"
TAG_DIFF = "flame.diff"
TAG_CI_LOW = "flame.ci_low"
TAG_CI_HIGH = "flame.ci_high"
TAG_CONFIDENCE = "flame.confidence"
TAG_BOOTSTRAP_SAMPLES = "flame.bootstrap_samples"
TAG_N_QUERIES = "flame.n_queries"
TAG_EVAL_SET = "flame.eval_set"
TAG_MARGIN = "flame.margin"
TAG_SCORE_PREFIX = "flame.score."
# Tags of the training run a registered version carries over: its git commit and the DVC hashes of its data.
LINEAGE_PREFIXES = ("git.", "dvc.")


def score_tag(eval_set: str) -> str:
    """The version tag holding a version's score on the eval set with this fingerprint."""
    return TAG_SCORE_PREFIX + eval_set[:12]


@dataclass
class Decision:
    model_name: str
    version: str
    promoted: bool
    # first-version | promoted | rejected | manual | already-champion | already-registered
    decision: str
    reason: str
    gate_metric: str
    candidate_value: float | None = None  # the challenger's score
    champion_version: str | None = None
    champion_value: float | None = None  # the champion's score, on the same eval set
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    bootstrap_samples: int | None = None
    n_queries: int | None = None
    eval_set: str | None = None  # the eval set's fingerprint (evaluations.paired)
    margin: float | None = None
    aliases: list[str] | None = None  # the version's aliases once decided (not a tag)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """The version tags recording this decision (fields left None are not written)."""
        fields = {
            TAG_DECISION: self.decision, TAG_REASON: self.reason, TAG_GATE_METRIC: self.gate_metric,
            TAG_CHALLENGER_SCORE: self.candidate_value, TAG_CHAMPION_VERSION: self.champion_version,
            TAG_CHAMPION_SCORE: self.champion_value, TAG_DIFF: self.diff, TAG_CI_LOW: self.ci_low,
            TAG_CI_HIGH: self.ci_high, TAG_CONFIDENCE: self.confidence,
            TAG_BOOTSTRAP_SAMPLES: self.bootstrap_samples, TAG_N_QUERIES: self.n_queries,
            TAG_EVAL_SET: self.eval_set, TAG_MARGIN: self.margin,
        }
        return {k: str(v) for k, v in fields.items() if v is not None}


# ---- the rule --------------------------------------------------------------------------------


def shortfalls(diff: float, ci_low: float, ci_high: float, reg: RegistryConfig) -> list[str]:
    """Why a difference does not promote (empty: it does): it must lie beyond the margin, and its
    interval wholly on the winning side of 0."""
    better = "higher" if reg.higher_is_better else "lower"
    out = []
    if not (diff > reg.margin if reg.higher_is_better else diff < -reg.margin):
        out.append(f"the difference is not beyond the margin ({better} is better)")
    if not (ci_low > 0 if reg.higher_is_better else ci_high < 0):
        out.append("the interval does not exclude 0")
    return out


def beats(diff: float, ci_low: float, ci_high: float, reg: RegistryConfig) -> bool:
    return not shortfalls(diff, ci_low, ci_high, reg)


def decide(reg: RegistryConfig, version: str, challenger: QueryHits, champion: str | None,
           comparison: Comparison | None, eval_set: str, why_unscored: str = "") -> Decision:
    """The decision for ``version`` (scored ``challenger``) against ``champion``, scored beside it
    in ``comparison`` (None when it could not be scored, ``why_unscored`` saying why)."""
    d = Decision(reg.model_name, version, False, "rejected", "", reg.gate_metric, candidate_value=challenger.score,
                 champion_version=champion, n_queries=challenger.n_queries, eval_set=eval_set, margin=reg.margin)
    where = f"on {challenger.n_queries} queries of eval set {eval_set[:12]}"
    if champion is None:
        d.promoted, d.decision = True, "first-version"
        d.reason = f"first version: champion by default ({reg.gate_metric} {challenger.score:.4f} {where})"
        return d
    if comparison is None:
        d.reason = f"not promoted: champion v{champion} has no loadable checkpoint to score against ({why_unscored[:500]})"
        return d
    held, diff, low, high = comparison.champion, comparison.diff, comparison.ci_low, comparison.ci_high
    d.champion_value, d.diff, d.ci_low, d.ci_high = held.score, diff, low, high
    d.confidence, d.bootstrap_samples = reg.confidence, reg.bootstrap_samples
    compared = (f"{reg.gate_metric} {challenger.score:.4f} vs champion v{champion} {held.score:.4f} {where}: "
                f"difference {diff:+.4f}, {reg.confidence:.0%} interval [{low:+.4f}, {high:+.4f}], margin {reg.margin}")
    missing = shortfalls(diff, low, high, reg)
    d.promoted = not missing
    d.decision = "promoted" if d.promoted else "rejected"
    d.reason = f"promoted: {compared}" if d.promoted else f"not promoted: {compared}; " + "; ".join(missing)
    return d


# ---- the gate ----------------------------------------------------------------------------------


def register_and_gate(
    config: FlameConfig,
    model_uri: str | None,
    *,
    checkpoint_dir: str | Path,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    training_id: str | None = None,
    lineage: dict[str, str] | None = None,
    limit: int | None = None,
) -> Decision:
    """Register ``model_uri`` (alias ``challenger``; None: log ``checkpoint_dir`` as a
    stand-alone pyfunc to ``run_id`` first), score it from ``checkpoint_dir`` and the champion
    from the registry, and decide.

    The version carries the profile, the training id and the steps it trained (a training
    already registered at those steps registers nothing: ``already-registered``), and the
    lineage of its run: the run's ``git.*`` and ``dvc.*`` tags, updated with ``lineage``.
    ``limit``: score only the first N images (quick checks, tests); it is part of the eval
    set's fingerprint.
    """
    registry = Registry.open(config, tracking_uri)
    reg = config.registry
    unique = {TAG_TRAINING_ID: training_id, TAG_TRAINED_STEPS: str(trained_steps(checkpoint_dir))} if training_id else None
    if unique and (existing := registry.find(unique)) is not None:
        return already_registered(registry, reg, str(existing.version), training_id)
    eval_set = load_eval_set(config, limit=limit)
    challenger = score_checkpoint(checkpoint_dir, eval_set)  # a broken checkpoint fails before it is registered
    if model_uri is None:
        model_uri = log_flame_model(config, checkpoint_dir, run_id=run_id, tracking_uri=registry.tracking_uri)
    run_tags = registry.client.get_run(run_id).data.tags if run_id else {}
    tags = {TAG_PROFILE: config.profile, **{k: v for k, v in run_tags.items() if k.startswith(LINEAGE_PREFIXES)},
            **(lineage or {})}
    version, created = registry.register(model_uri, run_id=run_id, tags=tags, unique=unique)
    if not created:
        return already_registered(registry, reg, version, training_id)
    return gate(registry, reg, version, challenger, eval_set)


def gate_challenger(config: FlameConfig, tracking_uri: str | None = None, *, limit: int | None = None) -> Decision:
    """Run the gate again for the version holding ``challenger`` (its checkpoint downloaded)."""
    registry = Registry.open(config, tracking_uri, must_exist=True)
    reg = config.registry
    version = registry.alias(CHALLENGER)
    if version is None:
        raise FlameError(f"registered model {reg.model_name!r} has no {CHALLENGER!r} version to promote")
    if registry.alias(CHAMPION) == version:
        return already_champion(registry, reg, version)
    eval_set = load_eval_set(config, limit=limit)
    with tempfile.TemporaryDirectory(prefix="flame-gate-") as tmp:
        checkpoint_dir = registry.download_checkpoint(version, tmp)
        challenger = score_checkpoint(checkpoint_dir, eval_set)
    return gate(registry, reg, version, challenger, eval_set)


def gate(registry: Registry, reg: RegistryConfig, version: str, challenger: QueryHits, eval_set: EvalSet) -> Decision:
    """Score the champion beside ``challenger``, decide, and record: champion moves by
    compare-and-set, so a decision made against a champion that has moved since is made again
    against the new one."""
    fingerprint = eval_set.fingerprint()
    for _ in range(MAX_ATTEMPTS):
        champion = registry.alias(CHAMPION)
        if champion == version:
            return already_champion(registry, reg, version)
        comparison, why = None, ""
        if champion is not None:
            try:
                with tempfile.TemporaryDirectory(prefix="flame-gate-") as tmp:
                    champion_dir = registry.download_checkpoint(champion, tmp)
                    comparison = compare(challenger, champion_dir, eval_set, reg.bootstrap_samples, reg.confidence,
                                         reg.bootstrap_seed)
            except (FlameError, OSError) as exc:
                why = str(exc)
        d = decide(reg, version, challenger, champion, comparison, fingerprint, why)
        scores = {version: challenger.score, **({champion: comparison.champion.score} if comparison else {})}
        if record(registry, d, expected_champion=champion, scores=scores):
            return d
        log.info("champion moved from v%s while v%s was scored; scoring the new champion", champion, version)
    raise FlameError(f"{reg.model_name!r}: the champion kept changing while v{version} was gated "
                     f"({MAX_ATTEMPTS} attempts); run `flame registry promote` again")


def record(registry: Registry, d: Decision, *, expected_champion: str | None,
           scores: dict[str, float] | None = None) -> bool:
    """Record ``d`` on its version (tags, description) and, when promoted, move ``champion`` to
    it; only while ``champion`` is still ``expected_champion``, else nothing is written and False
    is returned. ``scores`` (version -> score on ``d.eval_set``) become ``flame.score.<fingerprint>``."""
    other_tags = {v: {score_tag(d.eval_set): str(s)} for v, s in (scores or {}).items()} if d.eval_set else {}
    tags = d.tags()
    aliases = registry.record(d.version, tags, d.reason, champion_was=expected_champion,
                              make_champion=d.promoted, other_tags=other_tags)
    d.aliases = aliases
    return aliases is not None


def promote(config: FlameConfig, version: str | int, tracking_uri: str | None = None) -> Decision:
    """Make ``version`` the champion regardless of the gate (a manual decision, recorded as such)."""
    registry = Registry.open(config, tracking_uri, must_exist=True)
    reg = config.registry
    target = str(registry.version(version).version)
    for _ in range(MAX_ATTEMPTS):
        previous = registry.alias(CHAMPION)
        d = Decision(reg.model_name, target, True, "manual", f"promoted manually to {CHAMPION} (was v{previous})",
                     reg.gate_metric, champion_version=previous)
        if record(registry, d, expected_champion=previous):
            return d
    raise FlameError(f"{reg.model_name!r}: the champion kept changing while v{target} was promoted; try again")


def rollback(config: FlameConfig, tracking_uri: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to the previous distinct, still existing version of the champion
    history (as reconciled with the alias: one moved by hand counts as a change)."""
    registry = Registry.open(config, tracking_uri, must_exist=True)
    name = config.registry.model_name
    existing = {str(v.version) for v in registry.versions()}
    for _ in range(MAX_ATTEMPTS):
        current = registry.alias(CHAMPION)
        if current is None:
            raise FlameError(f"registered model {name!r} has no {CHAMPION!r} to roll back")
        history = registry.reconciled_history()
        while history and (history[-1] == current or history[-1] not in existing):
            history.pop()
        if not history:
            raise FlameError(f"{name!r} champion v{current} has no previous champion to roll back to")
        target = history[-1]
        if registry.compare_and_set(CHAMPION, current, target, history=history):
            reason = f"rolled back: {CHAMPION} returned from v{current} to v{target}"
            registry.set_tags(current, {TAG_DECISION: "rolled-back", TAG_REASON: reason}, description=reason)
            return {"model_name": name, "from_version": current, "to_version": target}
    raise FlameError(f"{name!r}: the champion kept changing during the rollback; try again")


def trained_steps(checkpoint_dir: str | Path) -> int | None:
    """The steps the checkpoint in ``checkpoint_dir`` was trained for (its model config's counter)."""
    return checkpoint.read_model_config(checkpoint_dir).get("trained_steps")


def already_champion(registry: Registry, reg: RegistryConfig, version: str) -> Decision:
    return Decision(reg.model_name, version, True, "already-champion", f"version {version} already is the {CHAMPION}",
                    reg.gate_metric, champion_version=version, aliases=registry.aliases_of(version))


def already_registered(registry: Registry, reg: RegistryConfig, version: str, training_id: str | None) -> Decision:
    aliases = registry.aliases_of(version)
    return Decision(reg.model_name, version, CHAMPION in aliases, "already-registered",
                    f"training {training_id} is already registered as version {version}; nothing registered",
                    reg.gate_metric, champion_version=registry.alias(CHAMPION), aliases=aliases)
