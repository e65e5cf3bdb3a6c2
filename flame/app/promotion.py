"""The promotion gate: a challenger and the current champion scored in one process on the
same eval set (``registry.gate_metric``), query by query, and compared with a paired
bootstrap. The challenger is promoted only if it wins by more than ``registry.margin`` and
the lower bound of the difference's interval is above zero (mirrored when lower is better).

Scoring happens outside the registry lock (it can take minutes); the decision is recorded
only if the champion it was scored against still holds the alias, else the new champion is
scored and the comparison made again.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from evaluations.paired import EvalSet, QueryHits, load_eval_set, paired_bootstrap, score_checkpoint
from flame.config import FlameConfig, RegistryConfig
from flame.errors import FlameError
from flame.mlflow import gate
from flame.mlflow.gate import CHALLENGER, CHAMPION, Decision

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


def register_and_gate(
    config: FlameConfig,
    model_uri: str,
    *,
    checkpoint_dir: str | Path,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    training_id: str | None = None,
    limit: int | None = None,
) -> Decision:
    """Register ``model_uri`` (alias ``challenger``; tags ``flame.training_id``, ``flame.profile``),
    score it from ``checkpoint_dir`` and the champion from the registry, and decide.

    A version already registered from ``training_id`` registers nothing: its decision is
    ``already-registered``. ``limit``: score only the first N images (quick checks, tests);
    it is part of the eval-set fingerprint.
    """
    uri = tracking_uri or config.tracking.tracking_uri
    if training_id is not None:
        existing = gate.registered_version(config, training_id, uri)
        if existing is not None:
            return _already_registered(config, str(existing.version), training_id, uri)
    eval_set = load_eval_set(config, limit=limit)
    challenger = score_checkpoint(checkpoint_dir, eval_set)  # a broken checkpoint fails before it is registered
    version, created = gate.register_version(config, model_uri, run_id=run_id, training_id=training_id, tracking_uri=uri)
    if not created:
        return _already_registered(config, version, training_id, uri)
    return _gate(config, version, challenger, eval_set, uri)


def gate_challenger(config: FlameConfig, tracking_uri: str | None = None, *, limit: int | None = None) -> Decision:
    """Run the gate again for the version holding ``challenger`` (its checkpoint downloaded)."""
    uri = tracking_uri or config.tracking.tracking_uri
    name = config.registry.model_name
    version = gate.alias_version(config, CHALLENGER, uri)
    if version is None:
        raise FlameError(f"registered model {name!r} has no {CHALLENGER!r} version to promote")
    if gate.alias_version(config, CHAMPION, uri) == version:
        return _already_champion(config, version, uri)
    eval_set = load_eval_set(config, limit=limit)
    with tempfile.TemporaryDirectory(prefix="flame-gate-") as tmp:
        challenger = score_checkpoint(gate.download_checkpoint(config, version, tmp, uri), eval_set)
    return _gate(config, version, challenger, eval_set, uri)


def beats(diff: float, ci_low: float, ci_high: float, reg: RegistryConfig) -> bool:
    """The rule: a difference beyond the margin, and an interval wholly on the winning side of 0."""
    return not _shortfalls(diff, ci_low, ci_high, reg)


def _shortfalls(diff: float, ci_low: float, ci_high: float, reg: RegistryConfig) -> list[str]:
    better = "higher" if reg.higher_is_better else "lower"
    out = []
    if not (diff > reg.margin if reg.higher_is_better else diff < -reg.margin):
        out.append(f"the difference is not beyond the margin ({better} is better)")
    if not (ci_low > 0 if reg.higher_is_better else ci_high < 0):
        out.append("the interval does not exclude 0")
    return out


def _gate(config: FlameConfig, version: str, challenger: QueryHits, eval_set: EvalSet, uri: str) -> Decision:
    fingerprint = eval_set.fingerprint()
    for _ in range(MAX_ATTEMPTS):
        champion = gate.alias_version(config, CHAMPION, uri)
        if champion == version:
            return _already_champion(config, version, uri)
        d, scores = _decide(config, version, challenger, champion, eval_set, fingerprint, uri)
        if gate.record_decision(config, d, expected_champion=champion, scores=scores, tracking_uri=uri):
            d.aliases = gate.version_aliases(config, version, uri)
            return d
        log.info("champion moved from v%s while v%s was scored; scoring the new champion", champion, version)
    raise FlameError(f"{config.registry.model_name!r}: the champion kept changing while v{version} was gated "
                     f"({MAX_ATTEMPTS} attempts); run `flame registry promote` again")


def _decide(config: FlameConfig, version: str, challenger: QueryHits, champion: str | None, eval_set: EvalSet,
            fingerprint: str, uri: str) -> tuple[Decision, dict[str, float]]:
    reg = config.registry
    d = Decision(reg.model_name, version, False, "rejected", "", reg.gate_metric, candidate_value=challenger.score,
                 champion_version=champion, n_queries=challenger.n_queries, eval_set=fingerprint, margin=reg.margin)
    where = f"on {challenger.n_queries} queries of eval set {fingerprint[:12]}"
    if champion is None:
        d.promoted, d.decision = True, "first-version"
        d.reason = f"first version: champion by default ({reg.gate_metric} {challenger.score:.4f} {where})"
        return d, {version: challenger.score}
    try:
        with tempfile.TemporaryDirectory(prefix="flame-gate-") as tmp:
            held = score_checkpoint(gate.download_checkpoint(config, champion, tmp, uri), eval_set)
    except (FlameError, OSError) as exc:
        d.reason = f"not promoted: champion v{champion} has no loadable checkpoint to score against ({str(exc)[:500]})"
        return d, {version: challenger.score}
    diff, low, high = paired_bootstrap(challenger, held, reg.bootstrap_samples, reg.confidence, reg.bootstrap_seed)
    d.champion_value, d.diff, d.ci_low, d.ci_high = held.score, diff, low, high
    d.confidence, d.bootstrap_samples = reg.confidence, reg.bootstrap_samples
    compared = (f"{reg.gate_metric} {challenger.score:.4f} vs champion v{champion} {held.score:.4f} {where}: "
                f"difference {diff:+.4f}, {reg.confidence:.0%} interval [{low:+.4f}, {high:+.4f}], margin {reg.margin}")
    if beats(diff, low, high, reg):
        d.promoted, d.decision = True, "promoted"
        d.reason = f"promoted: {compared}"
    else:
        d.reason = f"not promoted: {compared}; " + "; ".join(_shortfalls(diff, low, high, reg))
    return d, {version: challenger.score, champion: held.score}


def _already_champion(config: FlameConfig, version: str, uri: str) -> Decision:
    reg = config.registry
    return Decision(reg.model_name, version, True, "already-champion", f"version {version} already is the {CHAMPION}",
                    reg.gate_metric, champion_version=version, aliases=gate.version_aliases(config, version, uri))


def _already_registered(config: FlameConfig, version: str, training_id: str | None, uri: str) -> Decision:
    reg = config.registry
    aliases = gate.version_aliases(config, version, uri)
    return Decision(reg.model_name, version, CHAMPION in aliases, "already-registered",
                    f"training {training_id} is already registered as version {version}; nothing registered",
                    reg.gate_metric, champion_version=gate.alias_version(config, CHAMPION, uri), aliases=aliases)
