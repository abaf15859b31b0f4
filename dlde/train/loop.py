"""The training loop: :func:`train`, for notebooks, the CLI (:mod:`dlde.train.cli`) and torchrun.

A run folder (:class:`dlde.train.runs.RunFolder`) holds everything a run produces, written as it
goes so nothing is lost on a crash:

* ``config.json``: the :class:`~dlde.train.config.TrainConfig` and the dataset's class names and category ids;
* ``metrics.jsonl``: one JSON object per epoch (losses, learning rate, images trained, COCO AP, time);
* ``means_history.npy``: ``(epochs + 1, C, d)`` class means, epoch 0 = before training (heads with tracked means);
* ``kappa_history.npy``: ``(epochs + 1, C)`` vMF concentration of the tracked embeddings (same heads);
* ``checkpoint.pt``: model, optimizer, schedule and RNG state after the last finished epoch,
  written atomically; loads with ``torch.load(..., weights_only=True)`` and with
  ``DLDENetWithTrackedMeans.from_checkpoint`` / ``RetinaNet.from_checkpoint``.

A run is checked (:func:`_check_folder`, the checkpoint it resumes), set up (:func:`_setup`) and
prepared (:func:`_prepare`) before its folder is claimed; then started (:func:`_start`), and every
epoch is trained (:func:`_train_epoch`), validated (:func:`_validate`) and saved (:func:`_save_epoch`).
Until the first epoch is saved the claim can be undone: a start that fails leaves the folder as it
found it.

Under ``torchrun --nproc_per_node=N -m dlde.train ...`` the same entry point trains with
``DistributedDataParallel`` (see :mod:`dlde.train.distributed`): ``batch_size`` is the batch of one
process (the global batch is N times larger), global batch k holds the images of batch k of a
one-process run with that global batch, the tracked means and the loss normalizer are reduced over
processes, evaluation is sharded, and rank 0 alone writes the run folder.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dlde.errors import ConfigError, Key
from dlde.model.checkpoints import check_finite_state, load_checkpoint
from dlde.model.detector import RetinaNet
from dlde.model.inputs import image_problem
from dlde.model.means import mean_embedding_norm, means_diagnostics
from dlde.model.modes import evaluating, snapshot_buffers
from dlde.model.tracking import track_batch

from . import distributed
from .batches import EpochBatches, make_loader
from .builders import build_datasets, build_model, build_optimizer, build_scheduler
from .config import AMP_MODES, TrainConfig
from .progress import Progress
from .reimprint import bucket_mask, refit_scores, reimprint
from .reproducibility import environment, rng_state, seed_everything, set_rng_state
from .runs import RunFolder
from .validation import evaluate_model, validation_loss


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the per-epoch metrics and the trained model."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    model: nn.Module
    class_names: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """What one process holds while it trains a run."""

    config: TrainConfig
    context: distributed.DistributedContext
    device: torch.device
    folder: RunFolder
    train_set: Any
    val_set: Any
    model: RetinaNet
    network: nn.Module  # the model, or its DistributedDataParallel wrapper
    parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    epoch_batches: EpochBatches  # images and optimizer steps of every epoch
    positives_reducer: Callable | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    means_history: list[np.ndarray] = field(default_factory=list)
    kappa_history: list[np.ndarray] = field(default_factory=list)
    start_epoch: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 alone)."""
        return self.context.is_main

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"


def train(config: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Train a detector as described by ``config`` (plus keyword overrides) and return the result.

    Overrides are TrainConfig fields or head options (:meth:`TrainConfig.updated`). With
    ``resume=True`` the run continues after the last epoch saved in ``run_dir``; on the CPU with a
    fixed seed it reproduces the losses of an uninterrupted run. Started by torchrun
    (``WORLD_SIZE`` > 1 in the environment), every process calls this and trains its shard with
    DDP; every process returns the same metrics and model.
    """
    config = (config or TrainConfig()).updated(overrides) if overrides else (config or TrainConfig())
    context = distributed.context_from_environment()
    device = distributed.device_for(context, config.device)
    distributed.initialize(context, device, timeout_s=config.dist_timeout_s)
    try:
        return _train(config, context, device)
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, context: distributed.DistributedContext, device: torch.device) -> TrainResult:
    """Everything that can be checked is checked before the run folder is claimed: the folder
    (:func:`_check_folder`), the checkpoint a resume continues from, the datasets, the model and its
    optimizer (:func:`_setup`). A start that fails before it saves an epoch leaves the folder as it
    found it (:meth:`dlde.train.runs.Claim.undo`): a refused or failed resume changes no file."""
    folder = RunFolder(config.run_dir)
    _main_first(context, lambda: _check_folder(folder, config, context))
    state = _resume_state(folder, config)
    run = _setup(config, context, device, folder)
    _prepare(run, state)
    claim = _main_first(context, lambda: folder.claim_until_saved(config))  # rank 0's; None on the others
    try:
        _start(run, claim.record if claim is not None else None)
        for epoch in range(run.start_epoch, config.epochs + 1):
            started = time.perf_counter()
            row = _train_epoch(run, epoch)
            row["train_time_s"] = time.perf_counter() - started
            row.update(_validate(run, epoch))
            row["time_s"] = time.perf_counter() - started
            _save_epoch(run, epoch, row)
            if claim is not None:
                claim.keep()  # an epoch is saved: the folder holds this run now
        if run.start_epoch > config.epochs and run.writes:  # resuming a finished run: restore its files
            folder.write_histories(run.means_history, run.kappa_history)
    except BaseException:
        if claim is not None:
            claim.undo()  # nothing saved yet (a no-op once an epoch is): the folder as it was
        raise
    if claim is not None:
        claim.keep()
    return TrainResult(folder.path, run.metrics, run.model, list(run.train_set.class_names))


def _main_first(context: distributed.DistributedContext, work, *, then_others: bool = False):
    """Run ``work()`` on rank 0 first; an error there is raised on every process (no rank waits
    forever for a failed one). ``then_others``: the other ranks run ``work()`` afterwards (e.g. to
    read what rank 0 wrote); otherwise they return None."""
    if not context.distributed:
        return work()
    outcome, result = None, None
    if context.is_main:
        try:
            result = work()
        except Exception as error:  # noqa: BLE001 - shared with the other ranks, then re-raised here
            outcome = error
    shared = distributed.broadcast_from_main(outcome)
    if shared is not None:
        if context.is_main:
            raise outcome
        raise shared
    if not context.is_main and then_others:
        result = work()
    return result


def _check_folder(folder: RunFolder, config: TrainConfig, context: distributed.DistributedContext) -> None:
    """Check, writing nothing, that the run may claim its folder (:meth:`RunFolder.check_claim`);
    a run resumed mid-way must keep its number of processes (a finished one only reloads, with any
    number)."""
    record = folder.check_claim(config)
    if record is not None and folder.checkpoint_file.exists() and folder.finished_epochs() < config.epochs:
        saved = int(record.get("environment", {}).get("world_size", 1))
        if saved != context.world_size:
            raise ValueError(f"cannot resume {folder.path} with {context.world_size} process(es): it was trained "
                             f"with {saved} (global batch {saved} x batch_size); resume with "
                             f"--nproc_per_node={saved} (x nodes), or start a new run")


def _resume_state(folder: RunFolder, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint a resume continues from, loaded and checked (every process loads the same
    one); None when the run starts afresh."""
    if not (config.resume and folder.checkpoint_file.exists()):
        return None
    state = load_checkpoint(folder.checkpoint_file)
    check_finite_state(state["model"], str(folder.checkpoint_file))
    return state


# ------------------------------------------------------------------------------------ setup
def _setup(config: TrainConfig, context: distributed.DistributedContext, device: torch.device,
           folder: RunFolder) -> _Run:
    """Threads, seed, datasets, model (wrapped for DDP under torchrun), optimizer and schedule;
    nothing is written into the run folder."""
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("{fp16} needs a CUDA device (it scales the loss), got {device}; use {bf16} here",
                          fp16=Key("amp", "fp16"), device=str(device), bf16=Key("amp", "bf16"))
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)  # every process: the same initial model
    train_set, val_set = _main_first(context, lambda: build_datasets(config), then_others=True)
    model = build_model(config, train_set.num_classes, train_set.class_names).to(device)
    if config.reimprint != "off" or config.reimprint_buckets is not None:
        # Like the tracked means' head options, re-imprinting acts on the heads that track means: a
        # preset that turns it on (glyphs-1000) trains the other heads with the same sampler and loss.
        if model.tracked_means is None:
            if config.progress and context.is_main:
                print(f"reimprint={config.reimprint}: the {config.model} head has no tracked means; "
                      "nothing to re-imprint")
        else:
            bucket_mask(getattr(train_set, "frequencies", None), config.reimprint_buckets, train_set.num_classes)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    network: nn.Module = model
    positives_reducer = None
    if context.distributed:
        if config.sync_batchnorm:
            model = distributed.convert_sync_batchnorm(model, device)
        distributed.attach_means_reducer(model)
        distributed.attach_equalized_focal_reducer(model)  # the equalized focal loss's statistics, likewise
        positives_reducer = distributed.loss_normalizer
        # The means are kept equal by their reducer: DDP must not overwrite them with rank 0's.
        network = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config, parameters)
    epoch_batches = EpochBatches.of(train_set, config, context.world_size)  # repeat factors, if any: cheap
    scheduler = build_scheduler(config, optimizer, epoch_batches.total_steps(config.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    return _Run(config, context, device, folder, train_set, val_set, model, network, parameters, optimizer,
                scheduler, scaler, epoch_batches, positives_reducer)


def _prepare(run: _Run, state: dict[str, Any] | None) -> None:
    """Before the claim: restore the checkpoint ``state`` of a resume (every process the same), or
    fill the means by an initialising pass where asked and keep the means of epoch 0."""
    config, model = run.config, run.model
    if state is not None:
        model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        run.metrics = [dict(row) for row in state["metrics"]]
        run.means_history = [m.numpy() for m in state.get("means_history", [])]
        run.kappa_history = [k.numpy() for k in state.get("kappa_history", [])]
        run.start_epoch = int(state["epoch"]) + 1
        return
    means = model.tracked_means
    # Manual means that start at zero are filled by an initialising pass (the original set-up).
    zero_manual = means is not None and means.mode == "manual" and not bool(means.initialized.any())
    if means is not None and (config.init_means or zero_manual):
        means.reset_statistics()
        initialize_means(model, run.train_set, config, run.device, run.context)
    _keep_means(run)


def _start(run: _Run, saved_record: dict[str, Any] | None) -> None:
    """After the claim, rank 0 writes the record of a new run (``saved_record`` None) and the metrics so far."""
    if not run.writes:
        return
    if saved_record is None:
        run.folder.write_record({"config": run.config.to_dict(), "class_names": run.train_set.class_names,
                                 "category_ids": run.train_set.category_ids,
                                 "environment": environment(run.device, run.context.world_size)})
    run.folder.write_metrics(run.metrics)


def initialize_means(model: RetinaNet, dataset, config: TrainConfig, device,
                     context: distributed.DistributedContext | None = None) -> None:
    """A pass over ``dataset`` (``config.init_batches`` shuffled batches, or all) in eval mode that
    tracks the means without training (:func:`dlde.model.tracking.track_batch`), so no class
    starts without a mean.

    In ``'manual'`` mode the accumulated sums then become the means. With several processes
    (``context``) each tracks its shard of the global batches; the means' reducer merges them.
    """
    context = context or distributed.DistributedContext()
    loader = make_loader(dataset, config, shuffle=True, epoch=0, batch_size=config.batch_size * context.world_size,
                         context=context)
    total = len(loader) if config.init_batches is None else min(len(loader), config.init_batches)
    progress = Progress(config.progress and context.is_main, total, "init means")
    with evaluating(model):
        for index, (images, annotations) in enumerate(loader):
            if index >= total:
                break
            track_batch(model, images.to(device), annotations.to(device))
            progress.step()
    progress.close()
    model.tracked_means.update_means()


# ------------------------------------------------------------------------------------ epochs
def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One epoch of optimizer steps; returns its row of metrics so far (losses, learning rate)."""
    config, context, model = run.config, run.context, run.model
    if context.distributed:  # augmentation draws: seeded per process and epoch (resume-safe)
        seed_everything(config.seed * 1_000_003 + epoch * 1009 + context.rank)
    model.train()
    means = model.tracked_means
    if means is not None:
        means.reset_statistics()
    sums = {"loss": 0.0, "classification": 0.0, "bbox_regression": 0.0}
    batches = skipped = 0
    loader = make_loader(run.train_set, config, shuffle=True, epoch=epoch,
                         batch_size=config.batch_size * context.world_size, context=context,
                         pin_memory=run.pin_memory, factors=run.epoch_batches.factors)
    steps = run.epoch_batches.steps(epoch)
    progress = Progress(config.progress and run.writes, steps, f"epoch {epoch}/{config.epochs}")
    for images, annotations in loader:
        if batches + skipped >= steps:
            break
        losses = _step(run, images, annotations, f"epoch {epoch}, batch {batches + skipped}")
        if losses is None:
            skipped += 1
            progress.step()
            continue
        batches += 1
        for key in sums:
            sums[key] += losses[key]
        progress.step(loss=f"{sums['loss'] / batches:.3f}")
    progress.close()
    if context.distributed:  # each process's loss is its share of the global batch's: average them
        totals = distributed.mean_over_processes(torch.tensor(list(sums.values()), dtype=torch.float64,
                                                              device=run.device))
        sums = dict(zip(sums, totals.tolist()))
    if means is not None:
        means.update_means()  # 'manual' means: one update per epoch; a no-op otherwise
    distributed.average_batchnorm_statistics(model)  # without sync BN each process kept its own
    distributed.check_replicated(model, f"after epoch {epoch}")  # means, weights, statistics: bitwise equal
    row: dict[str, Any] = {"epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"],
                           "train_loss": sums["loss"] / max(1, batches),
                           "train_cls_loss": sums["classification"] / max(1, batches),
                           "train_box_loss": sums["bbox_regression"] / max(1, batches),
                           "train_images": run.epoch_batches.trained_images(epoch)}
    if run.epoch_batches.factors is not None:  # repeat-factor sampling: expected images per epoch / dataset's
        row["repeat_growth"] = run.epoch_batches.growth
    if skipped:
        row["skipped_steps"] = skipped
    if means is not None:
        row.update(_means_epoch(run, epoch))
    return row


def _means_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """After an epoch's training, for heads with tracked means: re-imprint them where the config asks
    (:func:`dlde.train.reimprint.reimprint`, then :func:`~dlde.train.reimprint.refit_scores` with
    ``reimprint_refit`` steps; their wall time ``reimprint_s`` is part of the epoch's
    ``train_time_s``), then the diagnostics of the epoch's metrics row: how
    spread out the means are and how far they moved from their start
    (:func:`dlde.model.means.means_diagnostics`), the length of the mean tracked embedding
    (``mean_embedding_norm``, near 1 when they all point one way) and the scale ``w``."""
    config, model, means = run.config, run.model, run.model.tracked_means
    row: dict[str, Any] = {}
    if config.reimprint == "epoch" or (config.reimprint == "end" and epoch == config.epochs):
        started = time.perf_counter()
        row.update(reimprint(model, run.train_set, config, run.device, run.context, buckets=config.reimprint_buckets))
        if config.reimprint_refit:
            row.update(refit_scores(model, run.train_set, config, run.device, config.reimprint_refit, run.context))
        row["reimprint_s"] = time.perf_counter() - started  # wall time, within the epoch's train_time_s
    row["mean_embedding_norm"] = mean_embedding_norm(means.stat_raw_sum, int(means.stat_counts.sum()))
    start = torch.from_numpy(run.means_history[0]) if run.means_history else means.means
    row.update(means_diagnostics(means.means, start, getattr(run.train_set, "frequencies", None)))
    scales = getattr(model.classification, "scales", None)
    if scales is not None:
        w = scales().detach()
        row.update({"w_mean": float(w.mean()), "w_min": float(w.min()), "w_max": float(w.max())})
    return row


def _step(run: _Run, images, annotations, where: str) -> dict[str, float] | None:
    """One optimizer step on a batch; its losses, or None for a non-finite step skipped
    (``nonfinite='skip'``). Non-finite pixels or losses never reach the means or the optimizer."""
    config, context, device = run.config, run.context, run.device
    images = images.to(device, non_blocking=run.pin_memory)
    annotations = annotations.to(device, non_blocking=run.pin_memory)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    problem = None  # one process: the model's own check refuses such images (a FloatingPointError below)
    if context.distributed:  # every process must agree before the forward's collectives start
        problem = image_problem(images)
        if distributed.any_over_processes(problem is not None, device):
            problem = problem or "non-finite or absurd pixels in the input images of another process"
    restore = None
    if problem is None:
        restore = snapshot_buffers(run.model)  # BatchNorm statistics, means, κ: undone if the step is refused
        amp_dtype = AMP_MODES[config.amp]
        try:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                output = run.network(images, annotations)
                losses = run.model.loss(*output, annotations, assignment=output.assignment,
                                        positives_reducer=run.positives_reducer)
            loss = losses["classification"] + losses["bbox_regression"]
            if not torch.isfinite(loss):
                problem = f"non-finite loss {loss.item()}"
        except FloatingPointError as error:  # non-finite outputs: the model restored its buffers and refused
            problem = str(error)
        if context.distributed and distributed.any_over_processes(problem is not None, device):
            problem = problem or "non-finite loss in another process"
    if problem is not None:
        if restore is not None:
            restore()
        if config.nonfinite == "raise":
            raise FloatingPointError(f"{problem} at {where}; the step was refused before it reached the means, the "
                                     f"BatchNorm statistics or the optimizer. The last good state is in "
                                     f"{run.folder.checkpoint_file}; nonfinite='skip' skips such steps instead")
        return None
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if config.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.parameters, config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return {"loss": loss.item(), "classification": losses["classification"].item(),
            "bbox_regression": losses["bbox_regression"].item()}


def _validate(run: _Run, epoch: int) -> dict[str, Any]:
    """The validation loss, and the COCO metrics every ``eval_every`` epochs and at the last."""
    config = run.config
    row: dict[str, Any] = {"val_loss": validation_loss(run.model, run.val_set, config, run.device, run.context)}
    if epoch % config.eval_every == 0 or epoch == config.epochs:
        coco = evaluate_model(run.model, run.val_set, config, run.device, run.context)
        row.update({key: value for key, value in coco.items() if key != "per_class"})
        row["per_class_AP"] = coco["per_class"]
    return row


# ------------------------------------------------------------------------------------ saving
def _save_epoch(run: _Run, epoch: int, row: dict[str, Any]) -> None:
    """Keep the epoch's metrics and means; rank 0 writes checkpoint, metrics and histories."""
    config = run.config
    run.metrics.append(_finite(row))
    _keep_means(run)
    if run.writes:
        _save_checkpoint(run, epoch)
        run.folder.write_metrics(run.metrics)
        run.folder.write_histories(run.means_history, run.kappa_history)
    if config.progress and run.writes:
        ap = f", AP {row['AP']:.3f}, AP50 {row['AP50']:.3f}" if "AP" in row else ""
        print(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, "
              f"val loss {row['val_loss']:.4f}{ap} ({row['time_s']:.0f} s)", flush=True)


def _keep_means(run: _Run) -> None:
    """Append the tracked means and their concentration now to the histories (heads with means)."""
    means = run.model.tracked_means
    if means is not None:
        current, kappa = means.snapshot()
        run.means_history.append(current.numpy())
        run.kappa_history.append(np.asarray(kappa, dtype=np.float64))


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN metrics (e.g. AP_large without large objects) become None so the JSON stays valid."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return {key: clean(value) for key, value in row.items()}


def _save_checkpoint(run: _Run, epoch: int) -> None:
    state = run.model.state_dict()
    check_finite_state(state, f"model of epoch {epoch} (not saved to {run.folder.checkpoint_file})")
    run.folder.save_checkpoint({
        "model": state,
        "hyperparameters": {"model": run.model.constructor_arguments()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "rng": rng_state(),
        "metrics": run.metrics,
        "means_history": [torch.from_numpy(m) for m in run.means_history],
        "kappa_history": [torch.from_numpy(k) for k in run.kappa_history],
    })
