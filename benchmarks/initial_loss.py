"""Initial classification (focal) loss of the three heads against the vocabulary and the embedding size.

For each number of classes ``C`` one sigmoid detector (ResNet-18, no pretrained weights) is built
from a fixed seed, with a fixed batch of random images and 1-3 random boxes per image labelled in
``[0, C)``. The cosine heads (``dlde``, ``prototypes``) are then swapped in on that same backbone,
with ``classifier_init`` ``'fixed'`` (the default: DLDENet's ``w = 7``, ``b = -0.5``; the prototypes'
scale 20 and the prior's bias) and ``'prior'`` (:mod:`dlde.model.priors`), each from ``--seeds``
head seeds (the means, prototypes and encoder weights change; backbone and batch do not). The loss
is the classification term of the first training forward, as the trainer's first step sees it;
the sigmoid head's is about ``FL(0.01, 1) = 1.13`` plus a background term that grows with ``C``.
The last column is the quadrature's expected excess ``ρ`` of each prior start (the loss of a batch
varies around it, most where ``C`` is small: its positives belong to a few classes).

Examples::

    python benchmarks/initial_loss.py                       # C 10, 80, 1203 x d 32, 128 (about a minute)
    python benchmarks/initial_loss.py --classes 1203 --embedding-sizes 32 64 128 256 --seeds 5
    python benchmarks/initial_loss.py --table figures/benchmarks/initial_loss.md  # the README's table

``--table`` also writes the README's table (per C and d: the sigmoid head's loss, each start's mean
loss over head seeds as a ratio to it) with the provenance line of
:func:`dlde.tables.write_table_file`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlde import CosinePrototypeClassification, DirectionalClassification, build_detector  # noqa: E402
from dlde.kernels import pin_script
from dlde.model.priors import cosine_quadrature, excess_losses  # noqa: E402
from dlde.model.registry import head_factory  # noqa: E402
from dlde.tables import markdown_table, write_table_file  # noqa: E402

HEADS = ("dlde", "prototypes")
INITS = ("fixed", "prior")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 80, 1203])
    parser.add_argument("--embedding-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--seeds", type=int, default=3, help="head seeds per cosine head and start")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="square image side in pixels")
    parser.add_argument("--features", type=int, default=32, help="FPN and head width")
    parser.add_argument("--head-convs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--table", default=None, metavar="FILE",
                        help="also write the README's table to FILE (e.g. figures/benchmarks/initial_loss.md)")
    return parser.parse_args(argv)


def random_batch(classes: int, images: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, S, S)`` and annotations ``(B, 3, 5)``: 1-3 boxes of 12-40 px per image, -1 rows as padding."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(images, 3, size, size, generator=generator)
    annotations = torch.full((images, 3, 5), -1.0)
    for i in range(images):
        k = 1 + i % 3
        wh = torch.randint(12, min(40, size), (k, 2), generator=generator).float()
        xy = (torch.rand(k, 2, generator=generator) * (size - wh)).floor()
        annotations[i, :k, :4] = torch.cat([xy, xy + wh], dim=1)
        annotations[i, :k, 4] = torch.randint(0, classes, (k,), generator=generator).float()
    return pixels, annotations


def classification_loss(model, images, annotations) -> float:
    with torch.no_grad():
        output = model(images, annotations)
        return float(model.loss(*output, annotations, assignment=output.assignment)["classification"])


def ratio(value: float) -> str:
    """A loss ratio: two decimals below 10, whole numbers above."""
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def expected_excess(name: str, d: int) -> float:
    """``ρ`` of the prior start of head ``name`` at ``d`` dimensions (the quadrature's)."""
    s, weights = cosine_quadrature(d)
    if name == "dlde":
        w, b = DirectionalClassification.prior_start(d)
        p = torch.sigmoid(w * (s + b)) / torch.sigmoid(s.new_tensor(w * (1 + b)))
    else:
        scale, bias = CosinePrototypeClassification.prior_start(d)
        p = torch.sigmoid(scale * s + bias)
    return float(torch.stack(excess_losses(p, weights, 0.01)).max())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    features = {"pyramid": args.features, "regression": args.features, "classification": args.features}
    start = time.perf_counter()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {args.images} images "
          f"{args.size}x{args.size}, ResNet-18 + FPN P3-P4 of width {args.features}, head convs {args.head_convs}, "
          f"{args.seeds} head seeds (mean, min-max)")
    print("| C | d | sigmoid | " + " | ".join(f"{name} {init}" for name in HEADS for init in INITS)
          + " | expected (prior: dlde / prototypes) |")
    print("|---|---|---|" + "---|" * (len(HEADS) * len(INITS)) + "---|")
    table_rows = []  # the README's: C, d, the sigmoid head's loss, each start's mean as a ratio to it
    for classes in args.classes:
        torch.manual_seed(0)
        model = build_detector("retinanet", classes, features=features, pretrained=False,
                               head_convs=args.head_convs, fpn_levels=[3, 4]).train()
        images, annotations = random_batch(classes, args.images, args.size)
        sigmoid = classification_loss(model, images, annotations)
        for d in args.embedding_sizes:
            cells, ratios = [], []
            for name in HEADS:
                for init in INITS:
                    losses = []
                    for seed in range(args.seeds):
                        torch.manual_seed(1 + seed)
                        model.classification = head_factory(name, embedding_size=d, classifier_init=init)(
                            model.features["pyramid"], model.anchors.num_anchors, model.features["classification"],
                            classes, convs=model.head_convs, group_norm=model.group_norm,
                            assignation_thresholds=model.assignation_thresholds,
                            allow_low_quality_matches=model.allow_low_quality_matches).train()
                        losses.append(classification_loss(model, images, annotations))
                    mean = statistics.mean(losses)
                    ratios.append(f"{ratio(mean / sigmoid)}×")
                    cells.append(f"{mean:.3g} ({ratio(mean / sigmoid)}x; {ratio(min(losses) / sigmoid)}-"
                                 f"{ratio(max(losses) / sigmoid)})")
            expected = " / ".join(f"{expected_excess(name, d):.2f}x" for name in HEADS)
            print(f"| {classes} | {d} | {sigmoid:.3f} | " + " | ".join(cells) + f" | {expected} |")
            table_rows.append([f"{classes:,}", f"{d}", f"{sigmoid:.3f}"] + ratios)
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.table:
        header = ["C", "d", "sigmoid"] + [f"{name} {init}" for name in HEADS for init in INITS]
        write_table_file(args.table, markdown_table(header, table_rows))


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
