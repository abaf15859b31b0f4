"""Data-parallel training helpers: process context, synchronized tracked means, sharded batches.

``torchrun --nproc_per_node=N -m dlde.train ...`` starts N processes; each reads its place from
the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) through
:func:`context_from_environment`. Plain ``python -m dlde.train`` has no such variables and runs
as one process without a process group, exactly as before.

What plain ``DistributedDataParallel`` does not cover, and this module does:

* **Tracked means.** They are buffers updated from each process's own batch. :func:`attach_means_reducer`
  gives every :class:`dlde.model.means.TrackedMeans` of a model a reducer that all-reduces the per-class
  embedding sums and counts of a step (:func:`sum_over_processes`), so every process applies the
  same update from the global batch and the means stay bitwise equal; DDP is built with
  ``broadcast_buffers=False`` so it never overwrites them. :func:`check_replicated` verifies, after
  every epoch, that means, weights and BatchNorm statistics are bitwise equal on all processes.
* **Equalized focal loss.** Its per-class gradient statistics are buffers added to in each process's
  backward; :func:`attach_equalized_focal_reducer` gives the model's
  :class:`dlde.model.equalized_focal.EqualizedFocal` a reducer that all-reduces a step's sums
  (:func:`total_over_processes`), so every process holds the same state and the same ``γ_j``.
* **Loss normalization.** :func:`loss_normalizer` is the focal loss's ``positives_reducer``:
  each process divides by the mean number of positives over processes, so after DDP averages the
  gradients, N processes of batch B step as one process of batch N * B.
* **Data order.** :func:`shard_batches` splits each global batch of the single-process order:
  process r takes items ``r::N``, so global batch k holds the images of batch k of one process.
* **BatchNorm.** :func:`convert_sync_batchnorm` uses torch's ``SyncBatchNorm`` on accelerators and
  :class:`GlobalBatchNorm2d` (the same statistics over all processes, with gloo) on the CPU;
  without them :func:`average_batchnorm_statistics` averages the running statistics each epoch.
* **Evaluation.** :func:`gather_to_main` collects per-process predictions on rank 0.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dlde.model.equalized_focal import EqualizedFocal
from dlde.model.means import TrackedMeans

#: Seconds a collective waits for a missing process before the run fails (a dead rank under a
#: launcher without failure detection, e.g. plain ``srun``); torchrun itself stops the others sooner.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly one-process) run.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this node: the accelerator this process uses.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """Whether there are several processes (a process group is needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0


def context_from_environment(environ: Mapping[str, str] | None = None) -> DistributedContext:
    """The context torchrun describes in ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; one process without them.

    Raises:
        ValueError: the variables are inconsistent (naming them).
    """
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them), got "
                         f"{[environ.get(k) for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')]}") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent process environment: RANK={rank}, WORLD_SIZE={world_size}, "
                         f"LOCAL_RANK={local_rank}")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def device_for(context: DistributedContext, requested: str | None) -> torch.device:
    """The device of this process: one accelerator per process, chosen by ``local_rank``.

    ``requested`` ``None`` picks CUDA when available, else the CPU; ``'cuda'`` (no index) becomes
    ``cuda:<local_rank>``; any other value is used as given.
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, context.local_rank)
    return device


def backend_for(device: torch.device) -> str:
    """``'nccl'`` for CUDA devices, ``'gloo'`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def initialize(context: DistributedContext, device: torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the process group torchrun set up (``MASTER_ADDR``/``MASTER_PORT``); nothing in one process."""
    if not context.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend_for(device), rank=context.rank, world_size=context.world_size,
                            timeout=datetime.timedelta(seconds=float(timeout_s)))


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ----------------------------------------------------------------------------- reductions
def sum_over_processes(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """All-reduce (SUM) per-class embedding ``sums (C, d)`` and ``counts (C,)`` in one collective.

    The reducer of :class:`dlde.model.means.TrackedMeans` in distributed training. Both travel packed
    in one ``(C, d + 1)`` float64 tensor: float32 sums add up exactly-rounded and counts stay
    exact (to 2**53). Every process receives the same bits. Identity without a process group.
    """
    if not _active():
        return sums, counts
    packed = torch.cat([sums.to(torch.float64), counts.to(torch.float64)[:, None]], dim=1)  # (C, d + 1)
    dist.all_reduce(packed)
    return packed[:, :-1].to(sums.dtype), packed[:, -1].round().to(counts.dtype)


def total_over_processes(values: Tensor) -> Tensor:
    """All-reduce (SUM) ``values`` in float64, returned in their dtype; every process receives the
    same bits. The reducer of :class:`dlde.model.equalized_focal.EqualizedFocal`. Identity without a
    process group."""
    if not _active():
        return values
    total = values.to(torch.float64, copy=True)
    dist.all_reduce(total)
    return total.to(values.dtype)


def loss_normalizer(positives: Tensor) -> Tensor:
    """The focal loss's ``positives_reducer``: this process's share of the global number of
    positive anchors, ``max(sum over processes, 1) / world size``, so that DDP's gradient average
    equals the gradient of the global batch, also when a global batch has fewer positives than
    processes. In one process: ``max(positives, 1)``.
    """
    if not _active():
        return positives.clamp(min=1)
    total = positives.clone()
    dist.all_reduce(total)
    return total.clamp(min=1) / dist.get_world_size()


def mean_over_processes(value: Tensor) -> Tensor:
    """The mean of ``value`` over processes (all-reduce SUM / world size); identity in one process.

    The focal loss's ``positives_reducer``: with it every process normalizes by the mean number
    of positive anchors, so DDP's gradient average equals the gradient of the global batch.
    """
    if not _active():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def any_over_processes(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process (so all processes take the same branch)."""
    if not _active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def tracked_means_modules(model: nn.Module) -> list[TrackedMeans]:
    """Every :class:`dlde.model.means.TrackedMeans` inside ``model`` (empty for heads without means)."""
    return [module for module in model.modules() if isinstance(module, TrackedMeans)]


def attach_means_reducer(model: nn.Module, reducer=sum_over_processes) -> int:
    """Set ``reducer`` on every tracked-means module of ``model``; returns how many there are.

    Pass ``reducer=None`` to detach (single-process behaviour).
    """
    modules = tracked_means_modules(model)
    for module in modules:
        module.reducer = reducer
    return len(modules)


def attach_equalized_focal_reducer(model: nn.Module, reducer=total_over_processes) -> int:
    """Set ``reducer`` on every :class:`dlde.model.equalized_focal.EqualizedFocal` of ``model`` (none
    unless it trains with ``classification_loss='efl'``); returns how many there are. ``reducer=None`` detaches.
    """
    modules = [module for module in model.modules() if isinstance(module, EqualizedFocal)]
    for module in modules:
        module.reducer = reducer
    return len(modules)


def average_batchnorm_statistics(model: nn.Module) -> int:
    """Replace every BatchNorm's running mean and variance by their mean over processes.

    Without ``--sync-batchnorm`` each process normalizes with its own batch and its running
    statistics drift apart; averaging them before evaluation and checkpointing (as timm's
    ``distribute_bn`` does) gives every process, and the checkpoint, the same model. Statistics
    that are already equal (``SyncBatchNorm``) are unchanged. Returns the number of layers.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats and m.running_mean is not None]
    if not _active() or not layers:
        return len(layers)
    stats = [tensor for layer in layers for tensor in (layer.running_mean, layer.running_var)]
    flat = torch.cat([tensor.reshape(-1).to(torch.float64) for tensor in stats])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, value in zip(stats, flat.split([t.numel() for t in stats])):
        tensor.copy_(value.reshape(tensor.shape))
    return len(layers)


def check_replicated(model: nn.Module, where: str) -> None:
    """Raise unless parameters and buffers (tracked means, BatchNorm statistics) are bitwise equal
    on every process; one broadcast of the model's floating-point state.

    Raises:
        RuntimeError: naming ``where`` and the tensors that differ from rank 0's.
    """
    if not _active():
        return
    state = [(name, value) for name, value in model.state_dict().items() if value.is_floating_point()]
    if not state:
        return
    local = torch.cat([value.detach().reshape(-1).to(torch.float64) for _, value in state])
    reference = local.clone()
    dist.broadcast(reference, src=0)
    differs = torch.zeros(len(state), device=local.device)
    offset = 0
    for index, (_, value) in enumerate(state):  # one comparison per tensor, not per element
        differs[index] = (local[offset:offset + value.numel()] != reference[offset:offset + value.numel()]).any()
        offset += value.numel()
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.any():
        names = [state[i][0] for i in differs.nonzero().flatten().tolist()]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise RuntimeError(f"model state differs between processes {where}: {shown}")


def gather_to_main(value: Any) -> list[Any] | None:
    """Every process's picklable ``value``, in rank order, on rank 0 (None elsewhere); ``[value]`` alone."""
    if not _active():
        return [value]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's picklable ``value`` on every process (``value`` itself in one process)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- data order
def shard_batches(batches: Sequence[Sequence[int]], rank: int, world_size: int) -> list[list[int]]:
    """This process's part of each global batch: items ``rank::world_size``.

    Global batch k of an N-process run then holds the images of batch k of a one-process run
    whose batch is N times larger. A global batch with fewer than ``world_size`` items (the last
    one of an epoch) is dropped on every process, since some process would get nothing to step on.

    Args:
        batches: the global batches, lists of dataset indices, in the single-process order.
        rank, world_size: this process's place.

    Returns:
        One list of dataset indices per kept global batch.
    """
    return [list(batch[rank::world_size]) for batch in batches if len(batch) >= world_size]


# ----------------------------------------------------------------------------- batch norm
class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the images of all processes, for the CPU (gloo), where torch's ``SyncBatchNorm`` is refused.

    In training with a process group the per-channel mean and (biased) variance come from the
    global batch through differentiable all-reduces, so the gradient is that of the global batch;
    the running statistics are updated with the unbiased global variance, as ``nn.BatchNorm2d``
    does. Without a process group, or in eval mode, it is ``nn.BatchNorm2d``. Input
    ``(B, C, H, W)``; every process needs at least one image.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce  # differentiable: the backward sums too

        channels = input.shape[1]
        # Statistics accumulate in float64 (as the one-process CPU kernel's accuracy needs), so
        # that splitting the batch over processes changes only the last bits.
        x = input.double()
        local = torch.tensor([x.numel() / channels], dtype=torch.float64, device=x.device)
        count = all_reduce(local)  # (1,) elements per channel over all processes
        mean = all_reduce(x.sum(dim=(0, 2, 3))) / count  # (C,)
        variance = all_reduce((x - mean[None, :, None, None]).square().sum(dim=(0, 2, 3))) / count  # (C,) biased
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = variance * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        scale = torch.rsqrt(variance + self.eps)  # (C,)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        work = torch.float32 if input.dtype == torch.float64 else input.dtype
        work = torch.promote_types(work, torch.float32)
        out = input.to(work) * scale.to(work)[None, :, None, None] + shift.to(work)[None, :, None, None]
        return out.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers that normalize over the global batch: ``nn.SyncBatchNorm`` on accelerators,
    :class:`GlobalBatchNorm2d` on the CPU. State-dict keys are unchanged, so checkpoints load into
    the plain model. Call before wrapping in DDP; a no-op without a process group."""
    if not _active():
        return model
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_batchnorm(model)


def _to_global_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, device=module.running_mean.device
                                      if module.running_mean is not None else None)
        converted.load_state_dict(module.state_dict())
        if module.affine:
            converted.weight.requires_grad_(module.weight.requires_grad)
            converted.bias.requires_grad_(module.bias.requires_grad)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _to_global_batchnorm(child))
    return module


def all_reduce_bytes(classes: int, embedding_size: int) -> int:
    """Bytes one process all-reduces per step for the tracked means: ``C * (d + 1)`` float64 values."""
    return classes * (embedding_size + 1) * torch.finfo(torch.float64).bits // 8


__all__ = ["DEFAULT_TIMEOUT_S", "DistributedContext", "GlobalBatchNorm2d", "all_reduce_bytes", "any_over_processes",
           "attach_equalized_focal_reducer", "attach_means_reducer", "average_batchnorm_statistics", "backend_for",
           "broadcast_from_main", "check_replicated", "context_from_environment", "convert_sync_batchnorm",
           "device_for", "gather_to_main", "initialize", "loss_normalizer", "mean_over_processes", "shard_batches",
           "shutdown", "sum_over_processes", "total_over_processes", "tracked_means_modules"]
