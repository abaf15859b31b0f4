"""Step time of DLDENet against torchvision's RetinaNet with the same backbone, pyramid and anchors.

Both detectors get a ResNet-18 (weights=None, trainable BatchNorm) with an FPN of the same width
on the same pyramid levels, head towers of 4 convolutions without GroupNorm at the FPN width, the
same anchors per location (sizes x scales per level, ratios = height / width), the same random
images and the same random annotations (2-5 boxes per image). Anchor counts and feature-map sizes
match exactly; torchvision rounds its base anchors to whole pixels and centres them at k * stride
instead of (k + 0.5) * stride, which changes which anchors match, not the amount of work.

Label convention: torchvision's RetinaNet has no background logit (sigmoid focal loss, one output
per class) and uses label ids as given, as indices of its ``num_classes`` outputs. Its COCO
models pass num_classes=91 with ids 1..90 and output 0 never positive. Here torchvision gets
``num_classes=C`` and labels 0..C-1, exactly like DLDENet, so both classify C outputs per anchor.

torchvision's transform is made a no-op: ``min_size = max_size = size`` (scale factor 1; it still
calls a bilinear ``interpolate`` at scale 1, part of its own cost) and mean 0 / std 1.

A training step is forward + loss + backward + SGD step; an inference step an eval-mode forward
(with post-processing) under ``torch.no_grad()``. The two models are timed alternately
(A, B, A, B, ...) after a warm-up and the medians are reported. The tracking share is the median
time of ``model.classification.track`` (wrapped with a timer in the training steps) over the
median DLDENet training step.

Both models train with SGD (lr 2e-3, momentum 0.9, wd 1e-4) and gradient-norm clipping at 10, and
DLDENet's means are initialized by one tracking pass (``dlde.model.tracking.track_batch``), as
``dlde.train`` does. Without
them DLDENet diverges to NaN on these random batches within ~10 steps: a randomly initialized
encoder gives nearly collinear embeddings, so right after the means are set every anchor scores
p ~ 1 for every class (focal loss ~200, gradient norm ~2e5).

Examples::

    python benchmarks/step_time.py --preset digits
    python benchmarks/step_time.py --preset coco-like
    python benchmarks/step_time.py --preset digits --score-threshold 1.0   # inference without NMS load
    python benchmarks/step_time.py --preset coco-like --classes 1203          # LVIS-sized vocabulary
    python benchmarks/step_time.py --preset coco-like --classifier-init prior # start near the focal prior
    python benchmarks/step_time.py --preset coco-like --profile 2             # top operators of both models
    python benchmarks/step_time.py --preset coco-like --device cuda --steps 50
    python benchmarks/step_time.py --threads 2 --table figures/benchmarks/step_time.md  # the README's table

``--table`` measures every configuration of ``TABLE_ROWS`` in turn (the other arguments apply to
each) and writes the README's speed table there, with the provenance line of
:func:`dlde.tables.write_table_file`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchvision  # noqa: E402
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: E402

import dlde  # noqa: E402
from dlde.kernels import pin_script
from dlde.model.priors import CLASSIFIER_INITS  # noqa: E402
from dlde.model.tracking import track_batch  # noqa: E402
from dlde.tables import markdown_table, write_table_file  # noqa: E402

SCALES_3 = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))

PRESETS = {
    # 128 px canvases with 20-40 px digits: anchors 16/32/64 on P3-P5, one ratio.
    "digits": dict(size=128, batch=16, levels=[3, 4, 5], channels=64, sizes=[16, 32, 64],
                   scales=SCALES_3, ratios=(1.0,), embedding_size=32, classes=10,
                   box_range=(20, 40), steps=20, warmup=3),
    # RetinaNet layout: P3-P7, sizes 32..512, 3 scales x 3 ratios. Embedding 128: the size at which
    # DLDENet leads the sigmoid head at 100 classes (figures/ablations/vocabulary_heads.md); 32-d, chosen
    # on the 10 digits for speed, does not detect at 1,000 classes, where 256-d is needed
    # (the retired vocabulary_levers sweep, docs/changes.md; docs/large-vocabularies.md).
    "coco-like": dict(size=384, batch=4, levels=[3, 4, 5, 6, 7], channels=128, sizes=[32, 64, 128, 256, 512],
                      scales=SCALES_3, ratios=(0.5, 1.0, 2.0), embedding_size=128, classes=80,
                      box_range=(16, 256), steps=6, warmup=1),
}

#: The rows of the README's speed table (``--table``): label, the arguments that measure it.
TABLE_ROWS = (
    ("`coco-like` (384 px, batch 4, P3–P7, width 128, 9 anchors, 80 classes), **128-d (the preset)**",
     ["--preset", "coco-like"]),
    ("`coco-like`, 64-d (`--embedding-size 64`)", ["--preset", "coco-like", "--embedding-size", "64"]),
    ("`coco-like`, 32-d (`--embedding-size 32`, the preset before the vocabulary measurements)",
     ["--preset", "coco-like", "--embedding-size", "32"]),
    ("`coco-like`, 128-d, 365 classes (`--classes 365`)", ["--preset", "coco-like", "--classes", "365"]),
    ("`coco-like`, 128-d, 1,203 classes (`--classes 1203`, LVIS-sized)",
     ["--preset", "coco-like", "--classes", "1203"]),
    ("`coco-like`, **256-d, 1,203 classes** (`--classes 1203 --embedding-size 256`: the size 1,000 classes need)",
     ["--preset", "coco-like", "--classes", "1203", "--embedding-size", "256"]),
    ("`coco-like`, learned prototypes (`--head prototypes`), 128-d", ["--preset", "coco-like", "--head", "prototypes"]),
    ("`digits` (128 px, batch 16, P3–P5, width 64, 3 anchors, 10 classes, 32-d)", ["--preset", "digits"]),
    ("`digits`, without detections (`--score-threshold 1.0`)", ["--preset", "digits", "--score-threshold", "1.0"]),
)
TABLE_HEADER = ("configuration", "training step", "inference", "DLDENet ms per training step", "tracking")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per model and phase")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured steps per model and phase")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="square image side in pixels")
    parser.add_argument("--embedding-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--lr", type=float, default=2e-3, help="SGD learning rate (momentum 0.9, wd 1e-4)")
    parser.add_argument("--grad-clip", type=float, default=10.0,
                        help="clip_grad_norm_ for both models, as dlde.train does (0: off)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="inference score threshold for both models (default: their own, 0.05); "
                             "1.0 gives no detections, i.e. times the forward without NMS load")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=None,
                        help="number of classes (default: the preset's; e.g. 365 or 1203 for large vocabularies)")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="after timing, profile K training steps of each model with torch.profiler and "
                             "print the top operators by self CPU time (0: off)")
    parser.add_argument("--head", choices=["dlde", "prototypes"], default="dlde",
                        help="dlde head against torchvision: tracked means (dlde) or learned cosine prototypes")
    parser.add_argument("--classifier-init", choices=CLASSIFIER_INITS, default=CLASSIFIER_INITS[0],
                        help="start of the cosine head's w, b (scale, bias): the head's fixed values or "
                             "'prior' (dlde.model.priors: the initial loss near the sigmoid head's)")
    parser.add_argument("--table", default=None, metavar="FILE",
                        help="measure every configuration of TABLE_ROWS and write the README's speed table "
                             "to FILE (e.g. figures/benchmarks/step_time.md)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("steps", "warmup", "batch", "size", "embedding_size", "classes"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    for key in ("levels", "channels", "sizes", "scales", "ratios", "box_range"):
        setattr(args, key, preset[key])
    if args.size % 2 ** max(args.levels):
        parser.error(f"--size must be a multiple of {2 ** max(args.levels)} so both models see the same maps")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --batch >= 1")
    return args


# ------------------------------------------------------------------------------------ models
def build_dlde(args) -> dlde.RetinaNet:
    """DLDENet (``--head dlde``) or the learned-prototype head, through the head registry."""
    width = args.channels
    return dlde.build_detector(
        args.head, args.classes, head_options={"embedding_size": args.embedding_size,
                                               "classifier_init": args.classifier_init}, resnet=18,
        features={"pyramid": width, "regression": width, "classification": width},
        anchors={"sizes": args.sizes, "scales": args.scales, "ratios": args.ratios},
        fpn_levels=args.levels, pretrained=False, head_convs=4, group_norm=False)


def build_torchvision(args) -> TorchvisionRetinaNet:
    # torchvision's resnet_fpn_backbone hard-codes 256 FPN channels, so build what it builds
    # (_resnet_fpn_extractor with trainable_layers=5) with our width. ResNet layerK has stride
    # 2**(K+1): layer2 -> C3 (stride 8), layer3 -> C4, layer4 -> C5 (stride 32).
    resnet = torchvision.models.resnet18(weights=None, norm_layer=nn.BatchNorm2d)  # all trainable
    inner = sorted({level for level in args.levels if level <= 5} | ({5} if max(args.levels) >= 6 else set()))
    inner = list(range(inner[0], inner[-1] + 1))
    returned_layers = [level - 1 for level in inner]
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    in_channels_list = [64 * 2 ** (k - 1) for k in returned_layers]
    extra = LastLevelP6P7(args.channels, args.channels) if max(args.levels) >= 6 else None  # P6 from P5
    backbone = BackboneWithFPN(resnet, return_layers, in_channels_list, args.channels, extra_blocks=extra)
    if extra is None:
        backbone.fpn.extra_blocks = None  # BackboneWithFPN would otherwise add a max-pool "P6"
    if inner != [level for level in args.levels if level <= 5] or (max(args.levels) == 6):
        raise ValueError(f"levels {args.levels} have no torchvision equivalent in this benchmark")
    sizes = tuple(tuple(s * scale for scale in args.scales) for s in args.sizes)
    anchor_generator = AnchorGenerator(sizes, (tuple(args.ratios),) * len(sizes))
    return TorchvisionRetinaNet(backbone, num_classes=args.classes, min_size=args.size, max_size=args.size,
                                image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                                anchor_generator=anchor_generator)


# -------------------------------------------------------------------------------------- data
def random_batch(args, generator: torch.Generator):
    """Images (B, 3, S, S), DLDENet annotations (B, M, 5) padded with -1, torchvision targets."""
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    counts = torch.randint(2, 6, (args.batch,), generator=generator)
    annotations = torch.full((args.batch, int(counts.max()), 5), -1.0)
    targets = []
    lo, hi = args.box_range
    for i, n in enumerate(counts.tolist()):
        wh = torch.randint(lo, hi + 1, (n, 2), generator=generator).float()
        xy = (torch.rand(n, 2, generator=generator) * (args.size - wh)).floor()
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(0, args.classes, (n,), generator=generator)
        annotations[i, :n, :4] = boxes
        annotations[i, :n, 4] = labels.float()
        targets.append({"boxes": boxes, "labels": labels})  # same 0..C-1 ids (num_classes=C)
    return images, annotations, targets


# ------------------------------------------------------------------------------------ timing
def make_sync(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn, sync) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.table is None:
        measure(args)
        return
    rows = []
    for label, arguments in TABLE_ROWS:  # later arguments win: each row's own over the common ones
        print(f"\n## {label}", flush=True)
        result = measure(parse_args(argv + arguments))
        tracking = "–" if result["track_ms"] is None else f"{result['track_ms']:.1f} ms"
        rows.append([label, f"{result['train_ratio']:.2f}", f"{result['infer_ratio']:.2f}",
                     f"{result['train_ms']:.0f}", tracking])
    write_table_file(args.table, markdown_table(TABLE_HEADER, rows))


def measure(args: argparse.Namespace) -> dict:
    """Time one configuration, print what it measured and return the README's numbers: the ratios
    ``train_ratio``, ``infer_ratio`` (DLDENet / torchvision), ``train_ms`` (DLDENet's median
    training step) and ``track_ms`` (None for a head without tracked means)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = make_sync(device)

    torch.manual_seed(args.seed)
    dl = build_dlde(args).to(device)
    torch.manual_seed(args.seed)
    tv = build_torchvision(args).to(device)
    if args.score_threshold is not None:
        dl.score_threshold = tv.score_thresh = args.score_threshold
    generator = torch.Generator().manual_seed(args.seed)
    images, annotations, targets = random_batch(args, generator)
    images, annotations = images.to(device), annotations.to(device)
    image_list = list(images)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]

    n_params = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    anchors_per_loc = len(args.scales) * len(args.ratios)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}")
    print(f"preset {args.preset}: image {args.size}x{args.size}, batch {args.batch}, levels P{args.levels[0]}-"
          f"P{args.levels[-1]}, FPN/head width {args.channels}, {anchors_per_loc} anchors/location "
          f"({len(args.ratios)} ratios x {len(args.scales)} scales), {args.classes} classes, "
          f"embedding {args.embedding_size} ({args.classifier_init} start), "
          f"boxes/image {annotations[..., 4].ge(0).sum(1).tolist()}")
    print(f"steps {args.steps} (warm-up {args.warmup}), SGD lr {args.lr} momentum 0.9 wd 1e-4, "
          f"grad clip {args.grad_clip or 'off'}, seed {args.seed}")
    print(f"trainable parameters: dlde {n_params(dl) / 1e6:.3f} M, torchvision {n_params(tv) / 1e6:.3f} M")

    # Time every call of DLDENet's tracking (it runs inside the forward of training steps); a head
    # without tracked means (prototypes) has none.
    track_times: list[float] = []
    original_track = getattr(dl.classification, "track", None)

    def timed_track(*a, **k):
        elapsed, out = timed(lambda: original_track(*a, **k), sync)
        track_times.append(elapsed)
        return out

    if original_track is not None:
        dl.classification.track = timed_track

    def optimizer(model):
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                               momentum=0.9, weight_decay=1e-4)

    opt_dl, opt_tv = optimizer(dl), optimizer(tv)
    params_dl = [p for p in dl.parameters() if p.requires_grad]
    params_tv = [p for p in tv.parameters() if p.requires_grad]

    def clip(params):
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, args.grad_clip)

    # Like dlde.train: initialize the means with one tracking pass before training, so the first
    # step does not score every anchor against means taken from a near-constant random embedding.
    if dl.tracked_means is not None:
        track_batch(dl, images, annotations)
    losses = {"dlde": [], "torchvision": []}

    def train_dl():
        opt_dl.zero_grad(set_to_none=True)
        output = dl(images, annotations)
        loss = sum(dl.loss(*output, annotations, assignment=output.assignment).values())
        loss.backward()
        clip(params_dl)
        opt_dl.step()
        return loss.detach()

    def train_tv():
        opt_tv.zero_grad(set_to_none=True)
        loss = sum(tv(image_list, targets).values())
        loss.backward()
        clip(params_tv)
        opt_tv.step()
        return loss.detach()

    def infer_dl():
        with torch.no_grad():
            return dl(images)

    def infer_tv():
        with torch.no_grad():
            return tv(image_list)

    # ---- training: A, B, A, B, ...
    dl.train(), tv.train()
    train_times = {"dlde": [], "torchvision": []}
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            track_times.clear()
        t_dl, loss_dl = timed(train_dl, sync)
        t_tv, loss_tv = timed(train_tv, sync)
        losses["dlde"].append(float(loss_dl))
        losses["torchvision"].append(float(loss_tv))
        if step >= args.warmup:
            train_times["dlde"].append(t_dl)
            train_times["torchvision"].append(t_tv)

    # ---- inference: A, B, A, B, ...
    dl.eval(), tv.eval()
    infer_times = {"dlde": [], "torchvision": []}
    for step in range(args.warmup + args.steps):
        t_dl, out_dl = timed(infer_dl, sync)
        t_tv, out_tv = timed(infer_tv, sync)
        if step >= args.warmup:
            infer_times["dlde"].append(t_dl)
            infer_times["torchvision"].append(t_tv)
    detections_dl = sum(len(boxes) for boxes, _ in out_dl) / args.batch
    detections_tv = sum(len(d["boxes"]) for d in out_tv) / args.batch

    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731  (ms)
    spread = lambda xs: f"[{min(xs) * 1e3:.1f}-{max(xs) * 1e3:.1f}]"  # noqa: E731
    print(f"loss first->last: dlde {losses['dlde'][0]:.3f} -> {losses['dlde'][-1]:.3f}, "
          f"torchvision {losses['torchvision'][0]:.3f} -> {losses['torchvision'][-1]:.3f}")
    for name in ("dlde", "torchvision"):
        print(f"train ms/step {name:<12}: {med(train_times[name]):8.1f}  min-max {spread(train_times[name])}")
    for name in ("dlde", "torchvision"):
        print(f"infer ms/step {name:<12}: {med(infer_times[name]):8.1f}  min-max {spread(infer_times[name])}")
    print(f"train ms/image dlde {med(train_times['dlde']) / args.batch:.2f}, "
          f"torchvision {med(train_times['torchvision']) / args.batch:.2f}")
    print(f"detections/image at the last inference step: dlde {detections_dl:.1f}, "
          f"torchvision {detections_tv:.1f} (score threshold {dl.score_threshold:g} / {tv.score_thresh:g}; "
          "post-processing cost grows with the detections)")
    print(f"train ratio (dlde/torchvision): {med(train_times['dlde']) / med(train_times['torchvision']):.2f}")
    print(f"infer ratio (dlde/torchvision): {med(infer_times['dlde']) / med(infer_times['torchvision']):.2f}")
    if track_times:
        print(f"tracking ms/step (dlde): {med(track_times):.2f}")
        print(f"tracking share of dlde train step: {med(track_times) / med(train_times['dlde']):.1%}")
    if args.profile:
        dl.train(), tv.train()
        for name, step in (("dlde", train_dl), ("torchvision", train_tv)):
            print_profile(name, step, args.profile)
    return {"train_ratio": med(train_times["dlde"]) / med(train_times["torchvision"]),
            "infer_ratio": med(infer_times["dlde"]) / med(infer_times["torchvision"]),
            "train_ms": med(train_times["dlde"]), "track_ms": med(track_times) if track_times else None}


def print_profile(name: str, step, steps: int, top: int = 12) -> None:
    """The operators of ``steps`` training steps with the most self CPU time, per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    print(f"profile {name}: {total:.0f} ms self CPU per training step (profiled, {steps} steps); top operators:")
    for event in events[:top]:
        ms = event.self_cpu_time_total / steps / 1e3
        print(f"  {event.key:<40} {ms:8.1f} ms/step {ms / total:6.1%}  {event.count / steps:6.0f} calls/step")


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
