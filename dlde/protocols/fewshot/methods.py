"""What the few-shot protocol is run with: the digits of the base and novel classes, the k values, the
draws, the base seeds, the methods and the fine-tuning settings."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BASE_CLASSES", "BASE_SEEDS", "DEFAULT_FINE_TUNE", "DRAWS", "METHODS", "NOVEL_CLASSES", "SEED_STRIDE",
           "SHOTS", "FineTune"]

BASE_CLASSES = (0, 1, 2, 3, 4, 5, 6)  # digits of the base training
NOVEL_CLASSES = (7, 8, 9)  # digits added from k shots
SHOTS = (1, 2, 5, 10, 30)  # k: annotated boxes per novel class
DRAWS = 5  # random k-shot sets per k
BASE_SEEDS = (0, 1, 2)  # training seeds of the base runs of each head
#: Base seed ``s`` runs the protocol with seed ``seed + SEED_STRIDE * s``: its own draws and
#: fine-tuning batches, never sharing a generator seed with another base seed's (below 1,000 draws).
SEED_STRIDE = 1000
#: method -> (base model, imprint the novel classes, fine-tune the classifier layer).
METHODS: dict[str, tuple[str, bool, bool]] = {
    "dlde_imprint": ("dlde", True, False),
    "dlde_imprint_finetune": ("dlde", True, True),
    "retinanet_finetune": ("retinanet", False, True),
    "prototypes_finetune": ("prototypes", False, True),
    "prototypes_imprint": ("prototypes", True, False),
}


@dataclass(frozen=True)
class FineTune:
    """TFA-style fine-tuning of the classifier layer on the k-shot images.

    Attributes:
        steps: optimizer steps (AdamW, no weight decay, constant learning rate).
        lr: learning rate.
        batch_size: shot images per step (drawn with replacement when there are fewer).
    """

    steps: int = 100
    lr: float = 0.01
    batch_size: int = 8


#: The fine-tuning settings of the protocol unless asked otherwise.
DEFAULT_FINE_TUNE = FineTune()
