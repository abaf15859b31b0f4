"""Batches of a dataset for training and evaluation: one process, or each process's shard of the
global batches of a one-process run (:func:`dlde.train.distributed.shard_batches`)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from dlde.data.transforms import collate

from . import distributed
from .config import TrainConfig


def make_loader(dataset, config: TrainConfig, *, shuffle: bool, epoch: int = 0, batch_size: int | None = None,
                context: distributed.DistributedContext | None = None, pin_memory: bool = False):
    """Batches of ``dataset``: one process reads whole batches of ``batch_size`` (default
    ``config.batch_size``); with several processes ``batch_size`` is the global batch and each
    process reads its shard of every global batch (:func:`dlde.train.distributed.shard_batches`)."""
    batch_size = batch_size or config.batch_size
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)  # order depends on epoch only
    if context is None or not context.distributed:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=config.num_workers, generator=generator,
                          persistent_workers=False, pin_memory=pin_memory)
    shards = distributed.shard_batches(global_batches(len(dataset), batch_size, shuffle, generator),
                                       context.rank, context.world_size)
    # Worker seeds come from a generator of this rank and epoch, never from the global RNG.
    workers = torch.Generator().manual_seed((config.seed * 1000 + epoch) * 1009 + context.rank)
    return DataLoader(dataset, batch_sampler=shards, collate_fn=collate, num_workers=config.num_workers,
                      generator=workers, persistent_workers=False, pin_memory=pin_memory)


def global_batches(size: int, batch_size: int, shuffle: bool, generator: torch.Generator) -> list[list[int]]:
    """The dataset indices of every batch of a one-process run, in its order.

    Drawn by a DataLoader over the indices with the one-process loader's settings and seeded
    generator, so the order is the one that loader would produce whatever torch does inside.
    """
    return list(DataLoader(range(size), batch_size=batch_size, shuffle=shuffle, generator=generator,
                           collate_fn=list))


def steps_per_epoch(size: int, batch_size: int, world_size: int) -> int:
    """Global batches per epoch: ``ceil(size / (world_size * batch_size))``, less a last global
    batch too small to give every process an image (:func:`dlde.train.distributed.shard_batches`)."""
    global_batch = world_size * batch_size
    full, rest = divmod(size, global_batch)
    return full + (1 if rest >= world_size else 0)


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
