"""The training loop's counters that survive a resume, and how they go into the train state."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


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

    def record_step(self, loss: float) -> None:
        self.step += 1
        self.step_in_epoch += 1
        self.epoch_loss_sum += loss
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss

    def end_epoch(self, skipped_corrupt: int) -> None:
        """Close the epoch: its mean loss, the corrupt images of all ranks, the next epoch's counters."""
        self.losses.append(self.epoch_loss_sum / max(1, self.step_in_epoch))
        self.skipped_corrupt = skipped_corrupt
        self.epoch += 1
        self.step_in_epoch, self.epoch_loss_sum = 0, 0.0
