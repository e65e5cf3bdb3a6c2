"""One img2dataset run for ``flame download``: its settings from ``data.*``, its distributor
(local processes, a Ray cluster or a Spark session), its printing kept off our stdout, and its
Ctrl-C handling turned back into ours afterwards."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
from pathlib import Path

from flame.data.download_layout import SHARD_DIGITS
from flame.data.img2dataset_patch import checked_download
from flame.errors import FlameError
from flame.paths import is_url

# The package each distributor needs, and the install that brings it.
DISTRIBUTOR_PACKAGES = {"ray": ("ray", "pip install 'flame-pipeline[cluster]'"),
                        "pyspark": ("pyspark", "pip install pyspark")}


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything printed to stdout meanwhile to stderr instead: ``sys.stdout`` in this
    process, and file descriptor 1, which img2dataset's spawned worker and logger processes
    inherit and print their progress to. Our stdout is kept for the command's results."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all: nothing for the children to print to either
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def check_distributor(data_config) -> None:
    """A FlameError when ``data.distributor`` needs a package that is not installed."""
    distributor = data_config.distributor
    if distributor not in DISTRIBUTOR_PACKAGES:
        return
    package, install = DISTRIBUTOR_PACKAGES[distributor]
    # img2dataset's ray distributor silently does nothing when ray is missing: check first.
    if importlib.util.find_spec(package) is None:
        raise FlameError(f"data.distributor: {distributor} needs the {package} package, which is not "
                         f"installed ({install}), or set data.distributor: multiprocessing")


@contextlib.contextmanager
def _spark_session(address: str | None):
    """A Spark session on the master ``address`` for the run; img2dataset uses the active
    session, and without one starts its own local[processes]."""
    if address is None:
        yield
        return
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master(address).appName("flame-download").getOrCreate()
    try:
        yield
    finally:
        spark.stop()


def distributor_context(data_config):
    """What the configured distributor needs around img2dataset's run."""
    check_distributor(data_config)
    if data_config.distributor == "ray":
        from flame.cluster import session

        # img2dataset's ray distributor submits its tasks to the cluster this process has joined.
        return session(data_config.cluster_address)
    if data_config.distributor == "pyspark":
        return _spark_session(data_config.cluster_address)
    return contextlib.nullcontext()


def _absolute(path: Path) -> str:
    # img2dataset means to make local paths absolute, but its test (fs.protocol == "file") misses
    # fsspec's ("file", "local"): a relative path would reach workers whose working folder is not ours.
    return str(path) if is_url(path) else str(Path(path).absolute())


def run_img2dataset(input_parquet: Path, out_dir: Path, data_config, extra_columns: list[str]) -> None:
    """Download ``input_parquet``'s rows into ``out_dir`` in img2dataset's incremental mode
    (shards whose stats file exists are skipped), one task per shard on ``data.distributor``.
    Ctrl-C raises KeyboardInterrupt."""
    previous_sigint = signal.getsignal(signal.SIGINT)  # img2dataset installs its own, for good
    try:
        with stdout_to_stderr(), distributor_context(data_config):
            checked_download(
                data_config.max_image_bytes,
                url_list=_absolute(input_parquet),
                output_folder=_absolute(out_dir),
                input_format="parquet",
                output_format="webdataset",
                url_col="url",
                caption_col="caption",
                save_additional_columns=extra_columns or None,
                image_size=data_config.image_size,
                resize_mode=data_config.resize_mode,
                encode_format=data_config.encode_format,
                number_sample_per_shard=data_config.number_sample_per_shard,
                distributor=data_config.distributor,
                processes_count=data_config.processes,
                thread_count=data_config.threads,
                timeout=data_config.timeout,
                retries=data_config.retries,
                max_image_area=data_config.max_image_area or float("inf"),
                oom_shard_count=SHARD_DIGITS,
                incremental_mode="incremental",
                enable_wandb=False,
            )
    except SystemExit as exc:  # img2dataset's own SIGINT handler exits; report it as an interrupt
        raise KeyboardInterrupt from exc
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
