"""The training loop's counters that survive a resume, and how they go into the train state; the
losses of the running epoch, kept on the device between readbacks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch


@dataclass
class TrainProgress:
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    losses: list[float] = field(default_factory=list)  # the mean loss of every finished epoch
    first_loss: float | None = None
    last_loss: float | None = None
    skipped_corrupt: int = 0  # undecodable images of the last finished epoch, over all ranks
    epoch_corrupt: int = 0  # those of the current epoch so far, this rank only

    def to_state(self) -> dict[str, Any]:
        """The train state's entries, one per counter (top-level keys, as train states always had them)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TrainProgress":
        return cls(**{f.name: state[f.name] for f in fields(cls)})

    def record_step(self) -> None:
        self.step += 1
        self.step_in_epoch += 1

    def record_losses(self, epoch_loss_sum: float, last_loss: float) -> None:
        """The losses as read back from the device (``DeviceLosses.read``) after the latest step."""
        self.epoch_loss_sum = epoch_loss_sum
        if self.first_loss is None:
            self.first_loss = last_loss
        self.last_loss = last_loss

    def end_epoch(self, skipped_corrupt: int) -> None:
        """Close the epoch: its mean loss, the corrupt images of all ranks, the next epoch's counters."""
        self.losses.append(self.epoch_loss_sum / max(1, self.step_in_epoch))
        self.skipped_corrupt = skipped_corrupt
        self.epoch += 1
        self.step_in_epoch, self.epoch_loss_sum = 0, 0.0


class DeviceLosses:
    """The loss sum of the running epoch and the latest step's loss, kept where the steps compute
    them, so that a step costs no host-device sync; ``read`` brings them back in one transfer. The
    sum is float64, one step at a time, as a float sum on the host would be: the same epoch means
    whenever it is read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.unread = 0
        self.last: torch.Tensor | None = None
        self.start_epoch(0.0)

    def start_epoch(self, loss_sum: float) -> None:
        """Sum from ``loss_sum``: 0, or where a resumed epoch stopped (``TrainProgress.epoch_loss_sum``)."""
        self.sum = torch.tensor(loss_sum, dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor) -> None:
        self.sum = self.sum + loss.double()
        self.last = loss
        self.unread += 1

    def read(self, *more: torch.Tensor) -> tuple[float, float, list[float]] | None:
        """``(epoch loss sum, last loss, [each of more])`` as Python floats, or None when no step was
        added since the last read."""
        if not self.unread:
            return None
        total, last, *rest = torch.stack([self.sum, self.last.double(), *(m.double() for m in more)]).tolist()
        self.unread = 0
        return total, last, rest
