"""Re-imprinting: every class mean set from one pass over the training set, without gradient.

The nearest-class-mean classifier of a trained encoder (Kang et al. 2020 on ImageNet-LT: 28.1 %
on few-shot classes against 7.7 % for the jointly trained linear classifier): the mean of class
``c`` becomes the normalized sum of the embeddings (centered, when the head centers) of every
anchor matched to a ``c`` box in the training set, computed in eval mode. Tracked means can take
it with no gradient step, which no learned classifier can; a tracked mean that barely left its
random start (a rare class over a short schedule) gets the direction its class actually has.

:func:`reimprint` re-imprints a model in place (the trainer calls it at the end of training or of
every epoch: ``TrainConfig.reimprint``); :func:`reimprint_run` does it on any finished run
(from the shell: :mod:`dlde.train.reimprint_cli`).

Re-imprinted means sit where the encoder's embeddings of their classes are, so the cosines of every
anchor to them are higher than to the tracked means the scale ``w`` and bias ``b`` were learned for:
at 1,000 classes the scores saturate (validation loss 1.00 -> 184, calibration error 0.10 -> 0.95,
while AP, which ranks, rises). :func:`refit_scores` fits ``w`` and ``b`` again on the training set
with everything else frozen (``TrainConfig.reimprint_refit`` steps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dlde.data.long_tail import BUCKETS
from dlde.model.growth import classifier_parameters
from dlde.model.modes import evaluating, training_only
from dlde.model.tracking import matched_embeddings

from . import distributed
from .batches import make_loader
from .config import TrainConfig
from .progress import Progress
from .runs import load_run


@torch.no_grad()
def class_sums(model: nn.Module, dataset, config: TrainConfig, device: torch.device | str,
               context: distributed.DistributedContext | None = None) -> tuple[Tensor, Tensor]:
    """Per-class sums of the matched anchors' embeddings over ``dataset`` in eval mode: ``(C, d)`` and
    the counts ``(C,)``, reduced over processes (each process reads its shard of the batches)."""
    context = context or distributed.DistributedContext()
    means = model.tracked_means
    sums, counts = torch.zeros_like(means.means), torch.zeros(means.means.shape[0], dtype=torch.long,
                                                             device=means.means.device)
    loader = make_loader(dataset, config, shuffle=False, batch_size=config.eval_batch_size * context.world_size,
                         context=context)
    progress = Progress(config.progress and context.is_main, len(loader), "re-imprint")
    with evaluating(model):
        for images, annotations in loader:
            embeddings, labels = matched_embeddings(model, images.to(device), annotations.to(device))
            sums.index_add_(0, labels, embeddings.to(sums.dtype))
            counts += torch.bincount(labels, minlength=len(counts))
            progress.step()
    progress.close()
    return distributed.sum_over_processes(sums, counts)


def bucket_mask(frequencies: Sequence[str] | None, buckets: Sequence[str] | None, classes: int) -> Tensor | None:
    """``(C,)`` bool of the classes whose frequency bucket is in ``buckets`` (None: every class).

    Raises:
        ValueError: buckets are asked for but the dataset has no frequencies, or a bucket is unknown.
    """
    if buckets is None:
        return None
    unknown = sorted(set(buckets) - set(BUCKETS))
    if unknown:
        raise ValueError(f"reimprint_buckets must be among {tuple(BUCKETS)} (rare, common, frequent), got {unknown}")
    if frequencies is None:
        raise ValueError("reimprint_buckets needs a dataset whose classes have frequency buckets (glyphs, LVIS)")
    if len(frequencies) != classes:
        raise ValueError(f"{len(frequencies)} class frequencies for {classes} classes")
    return torch.tensor([bucket in buckets for bucket in frequencies])


@torch.no_grad()
def reimprint(model: nn.Module, dataset, config: TrainConfig, device: torch.device | str,
              context: distributed.DistributedContext | None = None, *,
              buckets: Sequence[str] | None = None) -> dict[str, Any]:
    """Set the means of ``model`` from one pass over ``dataset`` (:func:`class_sums`), in place: each
    class mean becomes the normalized sum of its centered embeddings. A head that centers
    (``center_momentum``) embeds them centered by its running center already; otherwise the mean of
    every matched embedding of the pass is taken off (the embeddings share one large direction, and
    means that keep it score every anchor alike: measured on the glyphs-1000 preset, uncentered sums
    took APf from 0.239 to 0.160, and to 0.000 when only the rare and common means were re-imprinted).

    Args:
        model: a detector whose head has tracked means.
        dataset: the training set (its ``frequencies`` name the buckets).
        config: batch size, workers and progress of the pass.
        device: where the model is.
        context: the processes under torchrun (each reads its shard; the sums are reduced).
        buckets: re-imprint only the classes of these frequency buckets (e.g. ``('r', 'c')``); the
            others keep their tracked mean. None: every class seen in the pass.

    Returns:
        ``reimprinted``: the number of classes whose mean was set; ``reimprint_cos``: the median
        cosine between a re-imprinted mean and the tracked mean it replaced.
    """
    means = model.tracked_means
    if means is None:
        raise TypeError(f"re-imprinting needs class means; the {model.classification.name!r} head has none")
    chosen = bucket_mask(getattr(dataset, "frequencies", None), buckets, means.means.shape[0])
    sums, counts = class_sums(model, dataset, config, device, context)
    if means.center is None:  # centered class sums: the mean of every matched embedding taken off
        total = counts.sum().clamp(min=1).to(sums.dtype)
        sums = sums - counts.to(sums.dtype)[:, None] * (sums.sum(0) / total)  # sum over i of (e_i - mean)
    before = means.means.clone()
    changed = means.imprint_sums(sums, counts, None if chosen is None else chosen.to(counts.device))
    cosines = (before[changed] * means.means[changed]).sum(1)
    return {"reimprinted": int(changed.sum()),
            "reimprint_cos": float(cosines.median()) if len(cosines) else None}


#: The learning rate of :func:`refit_scores` (AdamW, no weight decay): 150 steps at 0.01 took the
#: validation loss of a re-imprinted glyphs-1000 model (centered, seed 0) from 184 back to 1.29.
REFIT_LR = 0.01


def refit_scores(model: nn.Module, dataset, config: TrainConfig, device: torch.device | str, steps: int,
                 context: distributed.DistributedContext | None = None) -> dict[str, Any]:
    """Fit the head's scale and bias again (:func:`dlde.model.growth.classifier_parameters`) for
    ``steps`` batches of ``dataset`` (shuffled from the config's seed, every image once per pass),
    with the config's classification loss; everything else is frozen and in eval mode (BatchNorm
    statistics, tracked means and the encoder stay as they are). In place.

    Under torchrun (``context``) each process reads its shard of every global batch (``batch_size``
    images per process, as in training); the loss is normalized by the batch's positives over all
    processes and the gradients of ``w`` and ``b`` are averaged over them before each step, so every
    process takes the step one process would take on the whole batch.

    Returns:
        ``reimprint_refit``: the steps taken; ``refit_loss_first`` and ``refit_loss_last``: the
        classification loss of the first batch and the mean of the last ten (over all processes).
    """
    context = context or distributed.DistributedContext()
    losses: list[float] = []
    progress = Progress(config.progress and context.is_main, steps, "refit w, b")
    with evaluating(model), training_only(model, classifier_parameters(model)) as trainable:
        optimizer = torch.optim.AdamW(trainable, lr=REFIT_LR, weight_decay=0.0)
        while len(losses) < steps:  # passes over the training set, each in its own seeded order
            order = config.epochs + 1 + len(losses)  # an order of its own, after the training's epochs
            for images, annotations in make_loader(dataset, config, shuffle=True, epoch=order, context=context,
                                                   batch_size=config.batch_size * context.world_size):
                losses.append(_refit_step(model, optimizer, trainable, images.to(device), annotations.to(device),
                                          context.distributed))
                progress.step()
                if len(losses) == steps:
                    break
    progress.close()
    return {"reimprint_refit": len(losses), "refit_loss_first": losses[0] if losses else None,
            "refit_loss_last": sum(losses[-10:]) / len(losses[-10:]) if losses else None}


def _refit_step(model: nn.Module, optimizer: torch.optim.Optimizer, trainable: Sequence[nn.Parameter],
                images: Tensor, annotations: Tensor, shared: bool) -> float:
    """One step of :func:`refit_scores`: the frozen network's features, then the head's scores with
    gradient and their classification loss (the box head is not run); ``shared``: this process holds
    a shard of the batch (the normalizer and the gradients then come from all processes)."""
    with torch.no_grad():
        images = model.check_images(images)
        feature_maps = model.fpn(images)
        anchors = model.anchors(images)
        assignment = model.assign(anchors, annotations)
    classifications = model.classification(feature_maps)  # eval mode: scores, no tracking
    loss = model.loss(anchors, None, classifications, annotations, assignment=assignment,
                      positives_reducer=distributed.loss_normalizer if shared else None)["classification"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if shared:  # what DDP does for the trained parameters: the mean of the processes' gradients
        for parameter in trainable:
            if parameter.grad is not None:
                parameter.grad = distributed.mean_over_processes(parameter.grad)
    optimizer.step()
    loss = loss.detach()
    return float(distributed.mean_over_processes(loss) if shared else loss)


def reimprint_run(run_dir: str | Path, *, buckets: Sequence[str] | None = None, refit: int = 0,
                  device: torch.device | str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Re-imprint the model of a finished run (its last checkpoint) from its training set.

    Nothing in the run folder changes: the model is returned (in eval mode) with what
    :func:`reimprint` (and, with ``refit`` steps, :func:`refit_scores`) reports, to evaluate
    (:func:`dlde.train.validation.evaluate_model`), inspect or save elsewhere.

    Example::

        model, report = reimprint_run("runs/glyphs-1000", buckets=("r", "c"))
    """
    run = load_run(run_dir)
    config = TrainConfig.from_dict(run.config).updated({"progress": False})
    device = torch.device(device or "cpu")
    model = run.load_model(device)
    train_set, _ = run.datasets()
    report = reimprint(model, train_set, config, device, buckets=buckets)
    if refit:
        report.update(refit_scores(model, train_set, config, device, refit))
    return model.eval(), report
