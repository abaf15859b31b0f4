"""Batches of a dataset for training and evaluation: one process, or each process's shard of the
global batches of a one-process run (:func:`dlde.train.distributed.shard_batches`).

A training epoch visits every image once in a shuffled order, or, with ``repeat_threshold``, the
images of repeat-factor sampling (:mod:`dlde.data.sampling`); either way the order depends on
the run's seed and the epoch alone (:func:`epoch_generator`), so a resumed run and every process
of a torchrun run see the same lists. :class:`EpochBatches` says how many images and steps each
epoch has.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from dlde.data.sampling import epoch_copies, epoch_order, image_labels, repeat_factors
from dlde.data.transforms import collate

from . import distributed
from .config import TrainConfig


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's order: seeded by the run's ``seed`` and the ``epoch`` only."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def make_loader(dataset, config: TrainConfig, *, shuffle: bool, epoch: int = 0, batch_size: int | None = None,
                context: distributed.DistributedContext | None = None, pin_memory: bool = False,
                factors: np.ndarray | None = None):
    """Batches of ``dataset``: one process reads whole batches of ``batch_size`` (default
    ``config.batch_size``); with several processes ``batch_size`` is the global batch and each
    process reads its shard of every global batch (:func:`dlde.train.distributed.shard_batches`).

    ``factors`` (``(len(dataset),)`` repeat factors, :attr:`EpochBatches.factors`) replaces the
    pass over every image (shuffled or not) by the epoch's repeat-factor sampled list
    (:func:`dlde.data.sampling.epoch_order`), batched in its shuffled order.
    """
    batch_size = batch_size or config.batch_size
    generator = epoch_generator(config.seed, epoch)  # order depends on epoch only
    one_process = context is None or not context.distributed
    if factors is None and one_process:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=config.num_workers, generator=generator,
                          persistent_workers=False, pin_memory=pin_memory)
    if factors is None:
        batches = global_batches(len(dataset), batch_size, shuffle, generator)
    else:
        batches = _chunks(epoch_order(factors, generator).tolist(), batch_size)
    rank, world_size = (0, 1) if one_process else (context.rank, context.world_size)
    shards = distributed.shard_batches(batches, rank, world_size)  # one process: the batches themselves
    # Worker seeds come from a generator of this rank and epoch, never from the global RNG.
    workers = torch.Generator().manual_seed((config.seed * 1000 + epoch) * 1009 + rank)
    return DataLoader(dataset, batch_sampler=shards, collate_fn=collate, num_workers=config.num_workers,
                      generator=workers, persistent_workers=False, pin_memory=pin_memory)


def global_batches(size: int, batch_size: int, shuffle: bool, generator: torch.Generator) -> list[list[int]]:
    """The dataset indices of every batch of a one-process run, in its order.

    Drawn by a DataLoader over the indices with the one-process loader's settings and seeded
    generator, so the order is the one that loader would produce whatever torch does inside.
    """
    return list(DataLoader(range(size), batch_size=batch_size, shuffle=shuffle, generator=generator,
                           collate_fn=list))


def _chunks(order: list[int], batch_size: int) -> list[list[int]]:
    """``order`` cut into batches of ``batch_size`` (the last may be smaller), as a DataLoader batches."""
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def steps_per_epoch(size: int, batch_size: int, world_size: int) -> int:
    """Global batches per epoch: ``ceil(size / (world_size * batch_size))``, less a last global
    batch too small to give every process an image (:func:`dlde.train.distributed.shard_batches`)."""
    global_batch = world_size * batch_size
    full, rest = divmod(size, global_batch)
    return full + (1 if rest >= world_size else 0)


@dataclass(frozen=True, eq=False)  # eq=False: factors is an array
class EpochBatches:
    """How many images and optimizer steps each training epoch of a run has.

    Without repeat-factor sampling every epoch has the same ``size`` images; with it, epoch ``e``
    has the images of :func:`dlde.data.sampling.epoch_order` drawn from
    ``epoch_generator(seed, e)``, whose count is known without building the list.

    Attributes:
        size: images of the training set.
        batch_size: images per process and step.
        world_size: processes.
        seed: the run's seed (with the epoch, it fixes the epoch's list).
        max_batches: at most this many steps per epoch (``max_train_batches``), or None.
        factors: ``(size,)`` repeat factors of the images, or None (each image once per epoch).
    """

    size: int
    batch_size: int
    world_size: int = 1
    seed: int = 0
    max_batches: int | None = None
    factors: np.ndarray | None = None

    @classmethod
    def of(cls, dataset, config: TrainConfig, world_size: int = 1) -> "EpochBatches":
        """The epochs of training on ``dataset`` with ``config`` in ``world_size`` processes;
        with ``config.repeat_threshold`` the images' repeat factors are computed from the
        dataset's labels (:func:`dlde.data.sampling.image_labels`: no image is decoded)."""
        factors = None
        if config.repeat_threshold is not None:
            factors = repeat_factors(*image_labels(dataset), len(dataset), config.repeat_threshold)
        return cls(len(dataset), config.batch_size, world_size, config.seed, config.max_train_batches, factors)

    @property
    def growth(self) -> float:
        """Expected images per epoch over the training set's images: ``mean r_i`` (1 without repeats)."""
        return 1.0 if self.factors is None else float(self.factors.mean())

    def images(self, epoch: int) -> int:
        """Images in epoch ``epoch``'s list (every image once, or with its repeats)."""
        if self.factors is None:
            return self.size
        return int(epoch_copies(self.factors, epoch_generator(self.seed, epoch)).sum())

    def steps(self, epoch: int) -> int:
        """Optimizer steps of epoch ``epoch`` (:func:`steps_per_epoch`, at most ``max_batches``)."""
        steps = steps_per_epoch(self.images(epoch), self.batch_size, self.world_size)
        return steps if self.max_batches is None else min(steps, self.max_batches)

    def trained_images(self, epoch: int) -> int:
        """Images (over all processes) in the global batches of epoch ``epoch``'s steps."""
        return min(self.images(epoch), self.steps(epoch) * self.batch_size * self.world_size)

    def total_steps(self, epochs: int) -> int:
        """Optimizer steps of epochs 1 to ``epochs``: the learning-rate schedule's length."""
        if self.factors is None:
            return self.steps(1) * epochs
        return sum(self.steps(epoch) for epoch in range(1, epochs + 1))


def sharded_eval_batches(dataset, config: TrainConfig, context: distributed.DistributedContext,
                         pin_memory: bool = False):
    """``(indices, images, annotations)`` of this process's shard of every global evaluation batch
    (``config.eval_batch_size`` images, as in one process); ``(indices, None, None)`` where the
    shard is empty, so every process steps through the same number of global batches."""
    batches = global_batches(len(dataset), config.eval_batch_size, False, torch.Generator())
    shards = [batch[context.rank::context.world_size] for batch in batches]
    loader = iter(DataLoader(dataset, batch_sampler=[shard for shard in shards if shard], collate_fn=collate,
                             num_workers=config.num_workers, pin_memory=pin_memory))
    for shard in shards:
        if shard:
            yield (shard, *next(loader))
        else:
            yield shard, None, None
