"""The few-shot protocol on the digits: new classes from a few boxes (:func:`run_protocol`).

* *Base training* on the digits ``BASE_CLASSES`` (0-6): the base datasets are generated with
  ``digits_classes=BASE_CLASSES``, so the digits 7-9 never appear in a base image. Images that
  would hold them are **dropped, not kept unlabeled**: an unlabeled 7 would be trained as
  background and then fought by the novel class (TFA and most few-shot detection benchmarks
  remove the novel annotations but keep the images; on the digits, generating without them is
  the clean version of "never annotated"). The base runs are trained by
  :mod:`dlde.protocols.base_runs`; this module only measures models.
* *Novel data*: the same generator with all ten digits (:func:`few_shot_datasets`); the
  per-digit train/val split of the source images does not depend on the kept classes, so novel
  shots come from training digit images and evaluation from validation ones.
* *k-shot draws* (:func:`draw_shots`): for each novel class, ``k`` boxes drawn without
  replacement among all its boxes of the novel training set, ``draws`` times per ``k`` (seeded).
  The fine-tuning set is the images holding the drawn boxes, annotated with the drawn novel
  boxes and every base-class box (base annotations exist in the base setting); other novel
  objects in those images stay unannotated (they are not part of the k shots).
* *Methods* (:data:`METHODS`), each starting from a copy of its base model grown by the novel
  classes (:func:`dlde.model.growth.add_classes`): DLDENet imprinted (zero steps,
  :func:`dlde.model.growth.imprint`), DLDENet imprinted then fine-tuned, the sigmoid RetinaNet and
  the learned-prototype head fine-tuned, and the prototypes imprinted (zero steps). Fine-tuning
  is TFA-style: only the classifier layer (:func:`dlde.model.growth.classifier_parameters`) is
  trained, with the backbone, pyramid and box head frozen (BatchNorm statistics too), for
  ``FineTune.steps`` steps of the classification loss; DLDENet's means keep being tracked from
  the fine-tuning batches, as in training.
* *Metrics*: novel AP / AP50 (COCO, on the novel categories of the full validation set) and
  base AP / AP50 (base categories, same images) before and after; steps and seconds per method
  on this machine.
* *Base seeds* (:func:`run_over_base_seeds`): the protocol runs on the base models of several
  training seeds per head (:data:`BASE_SEEDS`), each with its own k-shot draws (draws nested in
  base seeds). :func:`summarize` gives the mean and 95 % t-interval **over base seeds of each
  seed's mean over its draws** (``n`` = base seeds); with one base seed, over its draws.

The same base models meet unknown objects in :mod:`dlde.protocols.openset` and serve
retrieval in :mod:`dlde.protocols.retrieval`; the tables are in :mod:`dlde.protocols.tables`,
the figures in :mod:`dlde.plots.fewshot_plots`. The protocol is :mod:`.protocol` (run with the
settings of :mod:`.methods`; its typed results are :mod:`.results`); ``python -m
dlde.protocols.fewshot`` (:mod:`.cli`) runs it with the unknown-object and retrieval protocols on
the same base models and writes their tables.
"""

from .methods import (
    BASE_CLASSES,
    BASE_SEEDS,
    DEFAULT_FINE_TUNE,
    DRAWS,
    METHODS,
    NOVEL_CLASSES,
    SEED_STRIDE,
    SHOTS,
    FineTune,
)
from .protocol import (
    Shots,
    adapt,
    draw_shots,
    embedding_view,
    few_shot_datasets,
    fine_tune,
    group_metrics,
    images_with,
    run_over_base_seeds,
    run_protocol,
)
from .results import SUMMARY_METRICS, FewShotResult, FewShotRow, FewShotSummary, interval_over, summarize

__all__ = [
    "BASE_CLASSES", "NOVEL_CLASSES", "SHOTS", "DRAWS", "BASE_SEEDS", "SEED_STRIDE", "METHODS", "SUMMARY_METRICS",
    "DEFAULT_FINE_TUNE", "FineTune", "Shots", "FewShotRow", "FewShotResult", "FewShotSummary", "few_shot_datasets",
    "draw_shots", "fine_tune", "adapt", "group_metrics", "run_protocol", "run_over_base_seeds", "summarize",
    "interval_over", "images_with", "embedding_view",
]
