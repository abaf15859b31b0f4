"""Switching a model's mode for a while and restoring it afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def evaluating(model: nn.Module, *, evaluate_loss: bool = False) -> Iterator[nn.Module]:
    """Eval mode (and ``model.evaluate_loss``, when the model has it) inside the block; the
    previous mode and flag are restored on exit, also after an exception."""
    was_training = model.training
    had_flag = hasattr(model, "evaluate_loss")
    was_evaluate_loss = getattr(model, "evaluate_loss", False)
    model.eval()
    if had_flag:
        model.evaluate_loss = evaluate_loss
    try:
        yield model
    finally:
        model.train(was_training)
        if had_flag:
            model.evaluate_loss = was_evaluate_loss
