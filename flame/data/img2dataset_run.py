"""One img2dataset run for ``flame download``: its settings from ``data.*``, its printing kept
off our stdout, and its Ctrl-C handling turned back into ours afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from flame.data.download_layout import SHARD_DIGITS
from flame.data.img2dataset_patch import checked_download


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


def run_img2dataset(input_parquet: Path, out_dir: Path, data_config, extra_columns: list[str]) -> None:
    """Download ``input_parquet``'s rows into ``out_dir`` in img2dataset's incremental mode
    (shards whose stats file exists are skipped). Ctrl-C raises KeyboardInterrupt."""
    previous_sigint = signal.getsignal(signal.SIGINT)  # img2dataset installs its own, for good
    try:
        with stdout_to_stderr():
            checked_download(
                data_config.max_image_bytes,
                url_list=str(input_parquet),
                output_folder=str(out_dir),
                input_format="parquet",
                output_format="webdataset",
                url_col="url",
                caption_col="caption",
                save_additional_columns=extra_columns or None,
                image_size=data_config.image_size,
                resize_mode=data_config.resize_mode,
                encode_format=data_config.encode_format,
                number_sample_per_shard=data_config.number_sample_per_shard,
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
