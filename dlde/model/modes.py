"""Switching a model's mode for a while, and putting its running state back, afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
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


def snapshot_buffers(model: nn.Module) -> Callable[[], None]:
    """Copy every buffer of ``model`` now; the returned function puts the copies back.

    A training-mode forward changes buffers before anyone sees its loss: BatchNorm's
    ``running_mean``, ``running_var`` and ``num_batches_tracked``, the tracked class means and
    their κ statistics. A step refused afterwards (a non-finite loss) must not keep them, or one
    bad batch ruins every later one::

        restore = snapshot_buffers(model)   # before the forward
        output = network(images, annotations)
        ...
        if not torch.isfinite(loss):
            restore()                         # then raise, or skip the step

    The buffers are small (a few thousand values for a ResNet-18 detector); the copies are taken
    and put back without autograd, on the buffers' own devices. Buffers are found again by module
    and name, so the restore also reaches a buffer that was replaced in between.
    """
    saved = [(module, name, buffer.detach().clone())
             for module in model.modules() for name, buffer in module.named_buffers(recurse=False)]

    def restore() -> None:
        with torch.no_grad():
            for module, name, copy in saved:
                getattr(module, name).copy_(copy)

    return restore


@contextmanager
def buffers_kept_only_on_success(model: nn.Module, *, enabled: bool = True) -> Iterator[None]:
    """Inside the block, an exception puts every buffer of ``model`` back as it was on entry
    (:func:`snapshot_buffers`), then propagates: a refused training-mode pass keeps no BatchNorm
    statistics, means or κ statistics. ``enabled=False`` takes no snapshot."""
    restore = snapshot_buffers(model) if enabled else None
    try:
        yield
    except BaseException:
        if restore is not None:
            restore()
        raise


@contextmanager
def training_only(model: nn.Module, parameters: Iterable[nn.Parameter]) -> Iterator[list[nn.Parameter]]:
    """Inside the block only ``parameters`` of ``model`` require gradients (what few-shot fine-tuning
    and the refit after re-imprinting train); every parameter's flag is restored on exit, also after
    an exception. Yields the parameters as a list (for the optimizer)."""
    trainable = list(parameters)
    chosen = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in chosen)
        yield trainable
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
