"""Why a head does or does not detect on a large vocabulary: what its trained runs learned.

For each run folder (trained by ``python -m dlde.train`` or a sweep, e.g. of ``make vocabulary``)
this prints, on the first ``--images`` validation canvases:

- ``top-1`` / ``top-5``: how often the true class is the best (among the 5 best) scored class of
  the anchors matched to an object (IoU >= the object threshold), i.e. whether the classification
  itself is learned, before any thresholding, NMS or per-image cap;
- ``true p`` / ``best wrong p``: the medians over those anchors of the true class's probability and
  of the best wrong class's;
- for the cosine heads, the scale (DLDENet's ``|w_c|`` over classes against its start, the
  prototypes' scale), and for DLDENet the cosine of each tracked mean to its starting direction,
  per LVIS bucket (rare / common / frequent), from the run's means history.

Examples::

    python benchmarks/vocabulary_diagnosis.py runs/sweeps/glyphs-1000/*seed=0
    python benchmarks/vocabulary_diagnosis.py RUN_DIR --images 100 --table figures/benchmarks/vocabulary_diagnosis.md

Nothing is trained; ``--table`` writes the rows as a table with the provenance line of
:func:`dlde.tables.write_table_file`. The numbers depend only on the runs and ``--images``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlde.analysis.embeddings import angle_to_final  # noqa: E402
from dlde.data.transforms import collate  # noqa: E402
from dlde.kernels import pin_script
from dlde.model.modes import evaluating  # noqa: E402
from dlde.tables import markdown_table, write_table_file  # noqa: E402
from dlde.train import load_run  # noqa: E402

BUCKETS = ("r", "c", "f")


@torch.no_grad()
def anchor_ranks(model, dataset, images: int, batch_size: int = 8) -> dict[str, float]:
    """Top-1/top-5 accuracy and median probabilities over anchors matched to objects."""
    loader = DataLoader(Subset(dataset, range(min(images, len(dataset)))), batch_size=batch_size, collate_fn=collate)
    hits1 = hits5 = total = 0
    true_p, wrong_p = [], []
    with evaluating(model):
        for batch, annotations in loader:
            features = model.fpn(batch)
            scores = model.classification(features, assignment=None).float()  # (B, A, C)
            assignment = model.assign(model.anchors(batch), annotations)
            objects = assignment.objects_mask
            labels = assignment.assigned_annotations[..., 4][objects].long()  # (N,)
            matched = scores[objects]  # (N, C)
            top = matched.topk(min(5, matched.shape[1]), dim=1).indices
            hits1 += int((top[:, 0] == labels).sum())
            hits5 += int((top == labels[:, None]).any(dim=1).sum())
            total += labels.numel()
            true_p.append(matched.gather(1, labels[:, None]).squeeze(1))
            matched = matched.scatter(1, labels[:, None], -1.0)
            wrong_p.append(matched.max(dim=1).values)
    if total == 0:
        raise ValueError("no anchor of these images matches an object")
    return {"anchors": total, "top1": hits1 / total, "top5": hits5 / total,
            "true_p": float(torch.cat(true_p).median()), "wrong_p": float(torch.cat(wrong_p).median())}


def scale_text(model) -> str:
    """The scale of a cosine head: DLDENet's ``|w_c|`` (mean [min, max]) against its start, the
    prototypes' scale ('–' for the sigmoid head)."""
    head = model.classification
    if getattr(head, "name", "") == "dlde":
        weight = head.scales().detach()
        return f"{head.start_weight:.2f} → {weight.mean():.2f} [{weight.min():.2f}, {weight.max():.2f}]"
    if hasattr(head, "log_scale"):
        learned = "learned" if isinstance(head.log_scale, torch.nn.Parameter) else "fixed"
        return f"{float(head.log_scale.exp()):.2f} ({learned})"
    return "–"


def drift_text(run, frequencies) -> str:
    """Median cosine of each tracked mean to its start per bucket ('–' without a means history)."""
    history = run.means_history
    if history is None or len(history) < 2 or frequencies is None:
        return "–"
    cosines = np.cos(np.radians(angle_to_final(history)[0]))  # (C,) first to last epoch; NaN for a zero mean
    buckets = np.asarray(frequencies)
    return " / ".join(f"{np.nanmedian(cosines[buckets == b]):.3f}" for b in BUCKETS if (buckets == b).any())


HEADER = ("run", "matched anchors", "top-1", "top-5", "true p (median)", "best wrong p (median)",
          "scale: start → trained", "mean's cosine to its start r / c / f")


def diagnose(folder: str, images: int) -> list[str]:
    """One table row (:data:`HEADER`) for a run folder."""
    run = load_run(folder)
    model = run.load_model()
    _, val = run.datasets()
    ranks = anchor_ranks(model, val, images)
    return [f"`{folder}`", str(ranks["anchors"]), f"{ranks['top1']:.3f}", f"{ranks['top5']:.3f}",
            f"{ranks['true_p']:.3f}", f"{ranks['wrong_p']:.3f}", scale_text(model),
            drift_text(run, getattr(val, "frequencies", None))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--images", type=int, default=40, help="validation images (the first ones)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", default=None, metavar="FILE", help="also write the rows as a table to FILE")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    torch.set_num_threads(args.threads)
    rows = []
    for folder in args.runs:
        rows.append(diagnose(folder, args.images))
        print(" | ".join(f"{name}: {value}" for name, value in zip(HEADER, rows[-1])), flush=True)
    if args.table:
        note = (f"On the first {args.images} validation images of each run's dataset. Anchors matched to an "
                "object (IoU ≥ the object threshold): how often the true class scores highest (top-1) or among "
                "the 5 highest, and the median probability of the true class and of the best wrong one.")
        print(f"wrote {write_table_file(args.table, note + chr(10) + chr(10) + markdown_table(list(HEADER), rows))}")


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
