"""The task registry (``evaluations.tasks.TASKS``) is the one place that says what each task
does, and every task reports its per-query metrics as the score of its per-query hits."""

import subprocess
import sys

import pytest

from evaluations import runner
from evaluations.benchmarks import BENCHMARKS
from evaluations.protocol import check_protocol_keys, text_protocol
from evaluations.tasks import MANIFEST_TASKS, TASKS, ManifestFields, get_task
from flame.app.cli import build_parser
from flame.config import EvalConfig, repo_root
from flame.errors import FlameError


def test_the_registry_is_light_enough_for_the_command_line():
    code = ("import sys, evaluations.tasks, flame.app.cli; "
            "print(sorted(m for m in ('torch', 'sklearn', 'evaluations.tasks.retrieval') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=repo_root(), capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_every_user_of_task_names_reads_them_from_the_registry():
    assert {b.task for b in BENCHMARKS.values()} <= set(TASKS)
    assert set(MANIFEST_TASKS) == set(TASKS) - {"text_pair_retrieval"}
    command = ["evaluate", "--checkpoint", "ckpt", "--out", "out.json", "--manifest", "m.jsonl", "--task"]
    assert [build_parser().parse_args([*command, name]).task for name in MANIFEST_TASKS] == list(MANIFEST_TASKS)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "text_pair_retrieval"])  # benchmarks only
    with pytest.raises(FlameError, match=r"eval\.text_protocols\.retreival: not a task \(zeroshot_classification, retrieval"):
        check_protocol_keys(EvalConfig(text_protocols={"retreival": "raw"}))
    with pytest.raises(FlameError, match="unknown task 'nope'; available: zeroshot_classification, retrieval"):
        get_task("nope")
    config = EvalConfig(templates="short")
    assert [name for name in TASKS if text_protocol(config, name).templates == "short"] == ["zeroshot_classification"]


@pytest.mark.slow
def test_each_tasks_per_query_hits_are_its_reported_metrics(eval_model, eval_config, eval_manifest):
    """What the gate takes (``TaskOutput.per_query``) and what a result reports come from one computation."""
    labels = ["tabby cat", "canoe", "sea anemone", "tractor", "kite"]
    path = eval_manifest(6, extra=lambda i, row: {"label": labels[i % 5]})
    config = eval_config.eval.model_copy(update={"templates": "single", "linear_probe_train_per_class": 1})
    scored = set()
    for name in MANIFEST_TASKS:
        task = get_task(name)
        data, _ = runner.select_data(task, task.load_manifest(path, name, ManifestFields()), name)
        output = runner.score_data(eval_model, task, data, name, config, text_protocol(config, name))
        assert tuple(output.per_query) == task.per_query_metrics, name
        for metric, hits in output.per_query.items():
            assert hits.metric == metric and output.metrics[metric] == hits.score, (name, metric)
            assert hits.n_units == len(data.images), (name, metric)
            scored.add(metric)
    assert {"acc5", "mean_recall@5", "text_retrieval_recall@10"} <= scored
