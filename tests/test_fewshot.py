"""New classes without gradient steps (add_classes, imprint), the few-shot protocol, its base runs,
the unknown-object and retrieval protocols at tiny size, that none of them depends on a global
random state, and notebooks 05/06."""
import ast
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL, batch_annotations
from torch.testing import assert_close

from dlde import DLDENetWithTrackedMeans, RetinaNet
from dlde.analysis.stats import t_interval
from dlde.model.growth import add_classes, imprint
from dlde.model.registry import head_factory
from dlde.protocols import fewshot
from dlde.protocols.base_runs import base_config, ensure_base_run
from dlde.protocols.openset import open_set_evaluation
from dlde.protocols.retrieval import retrieval_evaluation, retrieval_examples
from dlde.protocols.tables import few_shot_table
from dlde.tables import interval_cell

HEADS = {"dlde": {"embedding_size": 8}, "retinanet": {}, "prototypes": {"embedding_size": 8}}


def model_of(name, classes=3, **options):
    return RetinaNet(classes, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4],
                     classification_head=head_factory(name, **{**HEADS[name], **options})).eval()


def images_and_boxes():
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 64)
    annotations = batch_annotations()
    return images, annotations


def boxes_of(annotations, label):
    return [a[a[:, 4] == label, :4] for a in annotations]


@pytest.mark.parametrize("name", ["dlde", "prototypes"])
def test_add_classes_then_imprint_changes_no_existing_parameter_or_mean(name):
    model = model_of(name)
    images, annotations = images_and_boxes()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert add_classes(model, 2, names=["x", "y"]) == [3, 4]
    grown = {k: v.clone() for k, v in model.state_dict().items()}
    assert grown.keys() == before.keys()
    for key, value in before.items():
        if grown[key].shape == value.shape:
            assert torch.equal(grown[key], value), key
        else:  # a per-class tensor: the old rows are untouched, k rows added
            assert grown[key].shape[0] == value.shape[0] + 2, key
            assert torch.equal(grown[key][:3], value), key
    used = imprint(model, "y", images, boxes_of(annotations, 2))
    assert used > 0
    assert all(p.grad is None for p in model.parameters())  # no backward pass, hence no gradient step
    after = model.state_dict()
    changed = {key for key in after if not torch.equal(after[key], grown[key])}
    per_class = {"dlde": {"classification.tracker.means", "classification.weight", "classification.bias"},
                 "prototypes": {"classification.prototypes", "classification.bias"}}[name]
    assert changed <= per_class and changed
    for key in changed:  # only row 4 (the imprinted class) moved
        assert torch.equal(after[key][:4], grown[key][:4]), key
    directions = model.class_directions()
    assert_close(directions[4].norm(), torch.tensor(1.0))
    if name == "dlde":
        w, b = model.classification.weight.detach(), model.classification.bias.detach()
        assert_close(w[4], w[:3].mean())  # the documented rule: the base classes' mean w and b
        assert_close(b[4], b[:3].mean())
        assert model.classification.tracker.initialized.tolist() == [True, True, True, False, True]


def test_imprint_in_training_mode_leaves_batchnorm_statistics_and_the_mode_alone():
    model = model_of("dlde").train()
    images, annotations = images_and_boxes()
    add_classes(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    assert before
    imprint(model, 3, images, boxes_of(annotations, 1))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.training and model.fpn.training


def test_imprinting_from_a_models_own_boxes_reproduces_the_tracked_mean():
    """Synthetic case: means tracked once from zeros equal the normalized sum of the matched
    embeddings, so a new class imprinted from the boxes of class c points along mean c."""
    model = DLDENetWithTrackedMeans(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4],
                                    embedding_size=8, means_init="zeros").eval()
    images, annotations = images_and_boxes()
    model(images, annotations, initializing=True)
    tracked = model.classification.means.clone()
    assert model.classification.tracker.initialized.all()
    new = add_classes(model, 3)
    for c, label in zip(range(3), new):
        imprint(model, label, images, boxes_of(annotations, c))
    means = model.classification.means
    cosines = torch.nn.functional.cosine_similarity(means[3:], tracked, dim=1)
    assert (cosines > 0.99).all(), cosines
    assert torch.equal(means[:3], tracked)


@pytest.mark.parametrize("name", list(HEADS))
def test_add_and_imprint_survive_a_checkpoint_round_trip(name, tmp_path):
    model = model_of(name)
    images, annotations = images_and_boxes()
    add_classes(model, 2, names=["seven", "eight"])
    if name != "retinanet":
        imprint(model, "seven", images, boxes_of(annotations, 0))
    model.save(tmp_path / "grown.pt")
    restored = RetinaNet.from_checkpoint(tmp_path / "grown.pt").eval()
    assert restored.classes == 5 and restored.class_names == ["0", "1", "2", "seven", "eight"]
    state, saved = restored.state_dict(), model.state_dict()
    assert state.keys() == saved.keys()
    for key in state:
        assert torch.equal(state[key], saved[key]), key
    with torch.no_grad():
        assert_close(restored.classification(restored.fpn(images)), model.classification(model.fpn(images)))


def test_sigmoid_add_classes_keeps_old_outputs_exactly_and_new_ones_at_the_prior():
    model = model_of("retinanet", classes=4)
    images, _ = images_and_boxes()
    with torch.no_grad():
        before = model.classification.logits(model.fpn(images))
        add_classes(model, 3)
        after = model.classification.logits(model.fpn(images))
    assert after.shape == (*before.shape[:2], 7)
    assert torch.equal(after[..., :4], before)
    prior = model.classification.prior
    assert_close(after[..., 4:], torch.full_like(after[..., 4:], -math.log((1 - prior) / prior)))
    with pytest.raises(NotImplementedError, match="no embedding space"):
        imprint(model, 5, images, [torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.zeros(0, 4)])


def test_add_classes_and_imprint_reject_bad_input():
    model = model_of("dlde")
    images, annotations = images_and_boxes()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            add_classes(model, bad)
    with pytest.raises(ValueError, match="already exist"):
        add_classes(model, 1, names=["0"])
    with pytest.raises(ValueError, match="names"):
        add_classes(model, 2, names=["a"])
    with pytest.raises(ValueError, match="not a class"):
        imprint(model, 7, images, boxes_of(annotations, 0))
    with pytest.raises(ValueError, match="no class named"):
        imprint(model, "zebra", images, boxes_of(annotations, 0))
    with pytest.raises(ValueError, match="box tensors"):
        imprint(model, 0, images, boxes_of(annotations, 0)[:1])


def _result(rows):
    """A few-shot result of hand-made rows, base AP 0.75 before."""
    return fewshot.FewShotResult({"dlde": {"AP": 0.75}}, [fewshot.FewShotRow.from_dict(r) for r in rows],
                                 fewshot.FineTune(), [], [], 0, [], [], 0)


def test_summarize_gives_the_t_interval_over_draws_and_the_forgetting():
    rows = [{"method": "dlde_imprint", "k": 1, "draw": j, "steps": 0, "seconds": 0.1, "novel_AP": ap,
             "novel_AP50": ap, "base_AP": 0.5, "base_AP50": 0.5, "novel_per_class_AP": {}}
            for j, ap in enumerate([1.0, 2.0, 3.0])]
    rows.append({**rows[0], "k": 2, "novel_AP": float("nan")})
    (entry, single) = fewshot.summarize(_result(rows))
    stats = entry.novel_AP
    assert list(stats) == ["mean", "sd", "low", "high", "n"]  # the key order results.json shows
    assert stats["mean"] == 2.0 and stats["sd"] == 1.0 and stats["n"] == 3
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}
    assert stats["low"] == pytest.approx(2.0 - half) and stats["high"] == pytest.approx(2.0 + half)
    assert entry.base_AP_before == 0.75 and entry.base_AP_drop == pytest.approx(0.25)
    assert single.draws == 1 and single.novel_AP["n"] == 0 and math.isnan(single.novel_AP["mean"])
    assert math.isnan(single.base_AP["low"])
    assert list(entry.to_dict()) == ["method", "k", "draws", "steps", "novel_AP", "novel_AP50", "base_AP",
                                     "base_AP50", "seconds", "base_AP_before", "base_AP_drop"]  # results.json
    assert fewshot.FewShotSummary.from_dict(entry.to_dict()) == entry
    assert few_shot_table([entry, single]).splitlines()[2:] == [
        f"| dlde_imprint | 1 | 3 | 2.000 [{2 - half:.3f}, {2 + half:.3f}] | 2.000 [{2 - half:.3f}, {2 + half:.3f}] "
        "| 0.750 → 0.500 [0.500, 0.500] | 0 | 0.1 [0.1, 0.1] |",
        "| dlde_imprint | 2 | 1 | n/a | 1.000 | 0.750 → 0.500 | 0 | 0.1 |"]


def test_summarize_over_base_seeds_is_the_t_interval_of_the_per_seed_means():
    def row(seed, draw, ap):
        return {"method": "dlde_imprint", "k": 1, "draw": draw, "base_seed": seed, "steps": 0, "seconds": 0.1,
                "novel_AP": ap, "novel_AP50": ap, "base_AP": 0.5, "base_AP50": 0.5, "novel_per_class_AP": {}}

    aps = {0: [0.1, 0.3], 1: [0.4, float("nan")], 2: [0.5, 0.7]}  # a NaN draw leaves its seed's mean to the others
    rows = [row(seed, j, ap) for seed, values in aps.items() for j, ap in enumerate(values)]
    (entry,) = fewshot.summarize(_result(rows))
    assert entry.base_seeds == 3 and entry.draws == 2
    assert list(entry.to_dict())[:5] == ["method", "k", "draws", "steps", "base_seeds"]  # results.json
    expected = t_interval([0.2, 0.4, 0.6])
    assert entry.novel_AP == pytest.approx(expected) and entry.novel_AP["n"] == 3  # n = base seeds, not pairs
    assert entry.base_AP["mean"] == 0.5 and entry.base_AP_drop == pytest.approx(0.25)
    assert fewshot.interval_over([entry]) == "3 base seeds × 2 draws"
    table = few_shot_table([entry]).splitlines()
    assert table[0].startswith("| method | k | base seeds × draws | novel AP |")
    assert table[2].startswith(f"| dlde_imprint | 1 | 3 × 2 | {interval_cell(expected)} |")
    single = fewshot.summarize(_result([r for r in rows if r["base_seed"] == 0]))
    assert "base_seeds" not in single[0].to_dict() and single[0].novel_AP == pytest.approx(t_interval([0.1, 0.3]))
    assert fewshot.interval_over(single) == "2 draws"


def test_base_run_folders_keep_seed_0_where_one_base_run_per_head_was(tmp_path):
    from dlde.protocols.base_runs import base_run_dir, prepare

    assert base_run_dir(tmp_path, "dlde", 0) == tmp_path / "dlde"  # the folder cached before base seeds
    assert base_run_dir(tmp_path, "prototypes", 2) == tmp_path / "prototypes,seed=2"
    with pytest.raises(ValueError, match="distinct base seeds"):
        prepare(None, tmp_path, ["dlde"], seeds=[1, 1], preset="tiny")
    with pytest.raises(ValueError, match="not a `seed` override"):
        prepare(None, tmp_path, ["dlde"], seeds=[0], preset="tiny", seed=3)


# ------------------------------------------------------------------------- protocol, tiny
@pytest.fixture(scope="module")
def tiny_setting(tmp_path_factory):
    """Untrained tiny base models on 0-6 and the ten-digit tiny datasets."""
    from dlde.train import build_model

    root = tmp_path_factory.mktemp("fewshot")
    torch.manual_seed(0)
    models, config = {}, None
    for name in ("dlde", "retinanet", "prototypes"):
        config = base_config(name, root / name, preset="tiny", data_root=str(root / "data" / "base"),
                                     digits_train_images=48)
        models[name] = build_model(config, len(fewshot.BASE_CLASSES)).eval()
    train_set, val_set = fewshot.few_shot_datasets(config)
    return models, train_set, val_set


def test_draw_shots_are_k_boxes_of_the_class_and_reproducible(tiny_setting):
    _, train_set, _ = tiny_setting
    draws = fewshot.draw_shots(train_set, [7, 8], 2, 3, seed=4)
    assert len(draws) == 3 and [d.draw for d in draws] == [0, 1, 2]
    for d in draws:
        for label, pairs in d.boxes.items():
            assert len(set(pairs)) == 2
            assert all(int(train_set.targets(i)[r, 4]) == label for i, r in pairs)
    again = fewshot.draw_shots(train_set, [7, 8], 2, 3, seed=4)
    assert [d.boxes for d in again] == [d.boxes for d in draws]
    assert draws[0].boxes != draws[1].boxes or draws[1].boxes != draws[2].boxes
    with pytest.raises(ValueError, match="fewer than k"):
        fewshot.draw_shots(train_set, [7], 10_000, 1)


def test_ensure_base_run_refuses_a_folder_holding_another_run(tmp_path):
    import json

    config = base_config("dlde", tmp_path / "dlde", preset="tiny", data_root=str(tmp_path / "data"))
    assert config.dataset_options["digits_classes"] == fewshot.BASE_CLASSES and config.model == "dlde"
    for changed in ({"epochs": config.epochs + 1}, {"threads": 3}):  # threads change float reductions
        saved = {**config.to_dict(), **changed}
        (tmp_path / "dlde").mkdir(exist_ok=True)
        (tmp_path / "dlde" / "config.json").write_text(json.dumps({"config": saved, "class_names": [],
                                                                   "category_ids": []}))
        with pytest.raises(ValueError, match=f"{next(iter(changed))}"):
            ensure_base_run(config)


@pytest.mark.slow
def test_few_shot_protocol_runs_end_to_end_at_tiny_size(tiny_setting):
    models, train_set, val_set = tiny_setting
    settings = fewshot.FineTune(steps=2, batch_size=2)
    result = fewshot.run_protocol(models, [str(c) for c in fewshot.BASE_CLASSES], train_set, val_set,
                                  shots=(1, 2), draws=2, settings=settings, max_eval_images=6)
    assert set(result.before) == set(models)
    assert len(result.rows) == 2 * 2 * len(fewshot.METHODS)
    for row in result.rows:
        for key in ("novel_AP", "novel_AP50", "base_AP", "base_AP50"):
            assert 0.0 <= getattr(row, key) <= 1.0 or math.isnan(getattr(row, key)), (row.method, key)
        assert row.steps == (settings.steps if fewshot.METHODS[row.method][2] else 0)
        assert row.seconds > 0
    assert list(result.rows[0].to_dict()) == ["method", "k", "draw", "steps", "seconds", "novel_AP", "novel_AP50",
                                              "base_AP", "base_AP50", "novel_per_class_AP"]  # results.json
    summary = fewshot.summarize(result)
    assert len(summary) == 2 * len(fewshot.METHODS) and all(e.draws == 2 for e in summary)
    table = few_shot_table(summary)
    assert table.count("\n") == len(summary) + 1 and "dlde_imprint" in table
    # the base model is not changed by adapting copies of it
    draw = fewshot.draw_shots(train_set, [7, 8, 9], 1, 1)[0]
    model, cost = fewshot.adapt(models["dlde"], "dlde_imprint", train_set, draw,
                                base_names=[str(c) for c in fewshot.BASE_CLASSES])
    assert models["dlde"].classes == 7 and model.classes == 10 and cost["steps"] == 0
    assert model.class_names[7:] == ["7", "8", "9"]
    assert model.classification.tracker.initialized[7:].all()


def test_open_set_and_retrieval_at_tiny_size(tiny_setting):
    models, _, val_set = tiny_setting
    out = open_set_evaluation(models, val_set, [str(c) for c in fewshot.BASE_CLASSES], max_images=8)
    assert out.images == 8 and out.known_objects + out.unknown_objects > 0
    assert set(out.models) == set(models)
    assert "cosine" in out.models["dlde"].scores and "cosine" not in out.models["retinanet"].scores
    assert out.models["retinanet"].skipped == {"cosine": "no embedding space"}
    for metrics in out.models.values():
        assert isinstance(metrics.a_ose, int) and metrics.a_ose_flagged <= metrics.a_ose
    retrieval = retrieval_evaluation(models["dlde"], val_set, max_images=8)
    assert 0.0 <= retrieval.map_at_r <= 1.0 and 0.0 <= retrieval.recall[1] <= retrieval.recall[5] <= 1.0
    assert list(retrieval.to_dict())[:3] == ["MAP@R", "Recall@1", "Recall@5"]
    examples = retrieval_examples(val_set, retrieval, [0, 1], k=3)
    assert len(examples["query_crops"]) == 2 and len(examples["result_crops"][0]) == 3
    assert examples["result_labels"].shape == (2, 3)


def test_each_base_seed_runs_the_protocol_with_its_own_draws(tiny_setting):
    models, train_set, val_set = tiny_setting
    names = [str(c) for c in fewshot.BASE_CLASSES]
    common = dict(shots=(1,), draws=2, methods=["dlde_imprint"], max_eval_images=2)

    def numbers(rows):
        return [{k: v for k, v in r.to_dict().items() if k not in ("seconds", "base_seed")} for r in rows]

    pooled = fewshot.run_over_base_seeds({0: models, 3: models}, names, train_set, val_set, seed=5, **common)
    assert pooled.base_seeds == [0, 3] and [r.base_seed for r in pooled.rows] == [0, 0, 3, 3]
    for base_seed in (0, 3):  # base seed s runs with seed 5 + 1000 s: seed 0 is the protocol of one base model
        alone = fewshot.run_protocol(models, names, train_set, val_set, seed=5 + fewshot.SEED_STRIDE * base_seed,
                                     **common)
        assert numbers(r for r in pooled.rows if r.base_seed == base_seed) == numbers(alone.rows)
        assert pooled.before_by_seed[base_seed] == alone.before
    first = fewshot.draw_shots(train_set, list(fewshot.NOVEL_CLASSES), 1, 2, seed=5)
    other = fewshot.draw_shots(train_set, list(fewshot.NOVEL_CLASSES), 1, 2, seed=5 + 3 * fewshot.SEED_STRIDE)
    assert [d.boxes for d in first] != [d.boxes for d in other]  # draws nested in base seeds
    assert pooled.before["dlde"]["AP"] == pytest.approx(pooled.before_by_seed[0]["dlde"]["AP"])  # same models
    assert fewshot.summarize(pooled)[0].base_seeds == 2
    assert list(pooled.rows[0].to_dict())[:2] == ["base_seed", "method"]  # results.json: the seed first


# ------------------------------------------------------------ no global random state (issue 18)
def global_states():
    """torch's, NumPy's and Python's global generator states."""
    numpy_state = np.random.get_state()
    return torch.get_rng_state(), (numpy_state[1].copy(), numpy_state[2]), random.getstate()


def assert_same_states(before, after):
    assert torch.equal(before[0], after[0]), "torch's global generator moved"
    assert np.array_equal(before[1][0], after[1][0]) and before[1][1] == after[1][1], "NumPy's global generator moved"
    assert before[2] == after[2], "Python's global generator moved"


def use_global_generators(n):
    """Move every global generator by an amount depending on ``n`` (what earlier code might do)."""
    torch.rand(1000 * n)
    np.random.rand(10 * n)
    [random.random() for _ in range(n)]


@pytest.mark.parametrize("method", list(fewshot.METHODS))
def test_adapt_gives_the_same_model_whatever_ran_before(tiny_setting, method):
    """A cached rerun of the pipeline reaches the protocol with the global generators elsewhere
    than a fresh one (which trained the base runs first): the adapted model must not change."""
    models, train_set, _ = tiny_setting
    draw = fewshot.draw_shots(train_set, list(fewshot.NOVEL_CLASSES), 1, 1)[0]
    adapted = []
    for n in (1, 3):
        use_global_generators(n)
        model, _ = fewshot.adapt(models[fewshot.METHODS[method][0]], method, train_set, draw,
                                 base_names=[str(c) for c in fewshot.BASE_CLASSES],
                                 settings=fewshot.FineTune(steps=2, batch_size=2), seed=5)
        adapted.append(model.state_dict())
    assert adapted[0].keys() == adapted[1].keys()
    for key, value in adapted[0].items():
        assert torch.equal(value, adapted[1][key]), key


def test_few_shot_protocol_neither_reads_nor_moves_the_global_generators(tiny_setting):
    models, train_set, val_set = tiny_setting

    def protocol():
        before = global_states()
        result = fewshot.run_protocol(models, [str(c) for c in fewshot.BASE_CLASSES], train_set, val_set,
                                      shots=(1,), draws=1, settings=fewshot.FineTune(steps=2, batch_size=2),
                                      max_eval_images=2)
        assert_same_states(before, global_states())
        return json.dumps([{k: v for k, v in row.to_dict().items() if k != "seconds"} for row in result.rows])

    first = protocol()
    use_global_generators(2)
    assert protocol() == first


def test_open_set_and_retrieval_leave_the_global_generators_alone(tiny_setting):
    models, _, val_set = tiny_setting
    before = global_states()
    open_set_evaluation(models, val_set, [str(c) for c in fewshot.BASE_CLASSES], max_images=4)
    retrieval_evaluation(models["dlde"], val_set, max_images=8)
    assert_same_states(before, global_states())


def test_ensure_base_run_leaves_threads_and_global_generators_as_it_found_them(tmp_path, monkeypatch):
    """Training pins its threads and seeds the global generators; a fresh pipeline run trains the
    base runs in the process that then measures them, a cached one does not: both must go on alike."""
    from dlde.protocols import base_runs
    from dlde.train.reproducibility import seed_everything

    def trainer(config):  # what dlde.train.train does to the process
        torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        use_global_generators(1)

    monkeypatch.setattr(base_runs, "train", trainer)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        use_global_generators(4)
        before = global_states()
        ensure_base_run(base_config("dlde", tmp_path / "dlde", preset="tiny", data_root=str(tmp_path / "data"),
                                    threads=1))
        assert torch.get_num_threads() == 2
        assert_same_states(before, global_states())
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_cached_rerun_of_the_few_shot_path_repeats_a_fresh_one(tmp_path):
    """Base runs of two base seeds trained here (fresh), then read back from their folders (cached), in
    one process: the few-shot rows, the unknown-object numbers of every score and retrieval repeat."""
    from dlde.files import jsonable
    from dlde.protocols.base_runs import prepare
    from dlde.protocols.openset import SCORES, open_set_over_seeds, pool_open_set
    from dlde.protocols.retrieval import pool_retrieval, retrieval_over_seeds

    def run():
        base = prepare(None, tmp_path / "base", seeds=(0, 1), preset="tiny", epochs=1, data_dir=tmp_path / "data",
                       digits_train_images=48)
        result = fewshot.run_over_base_seeds(base.models, base.base_names, base.train_set, base.val_set,
                                             shots=(1, 2), draws=1, settings=fewshot.FineTune(steps=2, batch_size=2),
                                             max_eval_images=6)
        open_set = pool_open_set(open_set_over_seeds(base.models, base.val_set, base.base_names, max_images=6,
                                                     concentrations=base.concentrations, scores=SCORES,
                                                     train_set=base.train_set, gallery_images=8, knn_k=2))
        retrieval = {name: pooled.to_dict() for name, pooled in
                     pool_retrieval(retrieval_over_seeds(base.models, base.val_set, max_images=6)).items()}
        for pooled in retrieval.values():
            pooled.pop("seconds_per_query")
        return json.dumps(jsonable({"before": result.before_by_seed, "open_set": open_set, "retrieval": retrieval,
                                    "rows": [{k: v for k, v in r.to_dict().items() if k != "seconds"}
                                             for r in result.rows]}))

    fresh = run()
    assert (tmp_path / "base" / "prototypes" / "checkpoint.pt").exists()
    assert (tmp_path / "base" / "prototypes,seed=1" / "checkpoint.pt").exists()
    assert '"base_seed": 1' in fresh and '"vmf"' in fresh
    assert run() == fresh


#: torch functions that draw from the global generator unless given one.
TORCH_DRAWS = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal",
               "bernoulli", "multinomial", "poisson"}
#: In-place tensor draws and torch.nn.init functions that draw (they take ``generator=`` too).
METHOD_DRAWS = {"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "geometric_", "cauchy_",
                "log_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                "trunc_normal_", "orthogonal_", "sparse_"}
#: Seeding or reading torch's global generators.
TORCH_GLOBAL_STATE = {"manual_seed", "seed", "set_rng_state", "get_rng_state", "initial_seed"}
#: What of np.random makes a generator of its own (the rest is the legacy global one).
NUMPY_SEEDED = {"default_rng", "Generator", "SeedSequence", "PCG64"}
#: ``(module stem, line text)`` of global draws in dlde/analysis that are allowed, with the reason. None today.
ALLOWED_GLOBAL_DRAWS: dict[tuple[str, str], str] = {}


def _generator_taking_functions(package: Path) -> set[str]:
    """Names of the dlde functions and methods whose ``generator`` argument is optional (None:
    the global generator)."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = node.args.args[len(node.args.args) - len(node.args.defaults):]
                optional = positional + [a for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d]
                if any(a.arg == "generator" for a in optional):
                    names.add(node.name)
    return names


def _is_global_draw(node: ast.AST, seeded_calls: set[str]) -> bool:
    """Whether ``node`` draws from, seeds or reads a global random state."""
    if isinstance(node, ast.Call):
        func, keywords = node.func, {k.arg for k in node.keywords}
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        unseeded = "generator" not in keywords
        shuffles = any(k.arg == "shuffle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                       for k in node.keywords)
        return ((name in TORCH_DRAWS and owner == "torch" and unseeded)
                or (name in METHOD_DRAWS | seeded_calls and unseeded)
                or (name in TORCH_GLOBAL_STATE and owner in ("torch", "torch.random", "torch.cuda"))
                or (name == "default_rng" and not node.args and "seed" not in keywords)
                or (name == "DataLoader" and shuffles and unseeded))
    if isinstance(node, ast.Attribute):
        owner = ast.unparse(node.value)
        return (owner in ("np.random", "numpy.random") and node.attr not in NUMPY_SEEDED) or owner == "random"
    return isinstance(node, ast.Import) and any(alias.name == "random" for alias in node.names)


def _global_draws(path: Path, seeded_calls: set[str]) -> list[str]:
    """``line: text`` of every draw from (or seeding of) a global random state in ``path``."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if _is_global_draw(node, seeded_calls):
            text = lines[node.lineno - 1].strip()
            if (path.stem, text) not in ALLOWED_GLOBAL_DRAWS:
                found.append(f"{node.lineno}: {text}")
    return found


def test_no_analysis_draws_from_a_global_random_state():
    """Every random draw in dlde/analysis, dlde/inference and dlde/protocols names its generator (a
    seeded torch.Generator or np.random.default_rng(seed)), also when it calls a dlde function that
    takes one (e.g. add_classes growing the prototypes): its numbers must not depend on what ran before."""
    import dlde

    package = Path(dlde.__file__).parent
    seeded_calls = _generator_taking_functions(package)
    assert {"add_classes", "grow"} <= seeded_calls
    paths = [path for folder in ("analysis", "inference", "protocols")
             for path in sorted((package / folder).rglob("*.py"))]
    assert any(path.name == "protocol.py" for path in paths)  # the few-shot protocol's own module
    found = {path.name: hits for path in paths if (hits := _global_draws(path, seeded_calls))}
    assert not found, f"draws from a global random state (give them a generator): {found}"


def test_the_global_draw_check_finds_what_it_looks_for(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import random\nimport numpy as np\nimport torch\n"
                      "a = torch.randn(3)\nb = torch.randn(3, generator=g)\nc = np.random.rand(2)\n"
                      "d = np.random.default_rng([0, 1])\ne = add_classes(m, 2)\nf = add_classes(m, 2, generator=g)\n"
                      "x.normal_()\ntorch.manual_seed(0)\nDataLoader(s, shuffle=True)\nDataLoader(s, shuffle=False)\n"
                      "rng.normal(size=3)\nrandom.random()\n")
    lines = [int(hit.split(":")[0]) for hit in _global_draws(source, {"add_classes"})]
    assert sorted(set(lines)) == [1, 4, 6, 8, 10, 11, 12, 15]


# ------------------------------------------------------------------------------- notebooks
def execute(notebook, output_dir, **parameters):
    """Run a notebook in a fresh kernel (one thread) and return its results.json."""
    import nbformat
    import papermill

    from dlde.pipeline.execute import PAPERMILL_OPTIONS
    from dlde.pipeline.lock import NOTEBOOKS_DIR
    from dlde.pipeline.notebook import read_results

    out_dir = output_dir / notebook.replace(".ipynb", "")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        papermill.execute_notebook(str(NOTEBOOKS_DIR / notebook), str(output_dir / notebook),
                                   parameters={**parameters, "OUT_DIR": str(out_dir)}, cwd=str(output_dir),
                                   **PAPERMILL_OPTIONS)
    executed = nbformat.read(output_dir / notebook, as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    return read_results(out_dir)


@pytest.mark.slow
def test_notebooks_05_and_06_run_under_papermill_with_tiny_parameters(tmp_path):
    from dlde.pipeline.lock import NOTEBOOKS_DIR, check_parameters_cell
    from dlde.train import PRESETS, TrainConfig, train

    for name in ("05_few_shot.ipynb", "06_open_set.ipynb"):
        check_parameters_cell(NOTEBOOKS_DIR / name)  # registered in the parameters lock
    run_dir, figures_dir, base_dir = tmp_path / "runs" / "dlde", tmp_path / "figures", tmp_path / "runs" / "base"
    train(TrainConfig.from_dict({"run_dir": str(run_dir), "data_root": str(tmp_path / "data" / "digits"),
                                 "epochs": 1, "digits_train_images": 48}, preset="tiny"))
    common = dict(RUN_DIR=str(run_dir), BASE_RUNS_DIR=str(base_dir), FIGURES_DIR=str(figures_dir), MAX_IMAGES=8,
                  BASE_SEEDS="0,1")
    few = execute("05_few_shot.ipynb", tmp_path, **common, SHOTS="1,2", DRAWS=2, FINETUNE_STEPS=2,
                  DETECTION_IMAGES=2, FIGURE_PREFIX="f_")
    for head in ("dlde", "retinanet", "prototypes"):
        for folder, seed in ((head, 0), (f"{head},seed=1", 1)):  # one base run per head and base seed
            saved = TrainConfig.from_dict(json.loads((base_dir / folder / "config.json").read_text())["config"])
            assert saved.model == head and saved.dataset_options["digits_classes"] == fewshot.BASE_CLASSES
            assert saved.seed == seed
            assert saved.epochs == 1 and saved.head_options == PRESETS["tiny"].head_options  # the run's budget
    assert few["shots"] == [1, 2] and few["draws"] == 2 and few["novel_names"] == ["7", "8", "9"]
    assert few["base_seeds"] == [0, 1] and few["interval"] == "95 % t-interval over 2 base seeds × 2 draws"
    assert set(few["before"]) == {"dlde", "retinanet", "prototypes"} and set(few["before_by_seed"]) == {"0", "1"}
    assert len(few["rows"]) == 2 * 2 * 2 * len(fewshot.METHODS) and len(few["summary"]) == 2 * len(fewshot.METHODS)
    assert all(e["base_seeds"] == 2 and e["novel_AP"]["n"] <= 2 for e in few["summary"])
    expected = ["f_few_shot_novel_ap", "f_few_shot_novel_ap50", "f_few_shot_base_ap", "f_few_shot_detections",
                "f_few_shot_means_umap"]
    assert few["figures"] == expected
    import nbformat

    shown = "".join(o.text for c in nbformat.read(tmp_path / "05_few_shot.ipynb", as_version=4).cells
                    if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    assert "novel_AP (mean [95 % interval]): at k = 1" in shown and "Cosine of each imprinted mean" in shown
    mtimes = {head: (base_dir / head / "checkpoint.pt").stat().st_mtime for head in ("dlde", "retinanet")}
    opened = execute("06_open_set.ipynb", tmp_path, **common, HEADS="dlde,retinanet", RETRIEVAL_QUERIES=2,
                     RETRIEVAL_K=2, GALLERY_IMAGES=8, FIGURE_PREFIX="o_")
    # the cached base runs are reused, not retrained
    assert mtimes == {head: (base_dir / head / "checkpoint.pt").stat().st_mtime for head in mtimes}
    pooled = opened["open_set"]
    assert pooled["base_seeds"] == [0, 1] and set(pooled["models"]) == {"dlde", "retinanet"}
    assert list(pooled["models"]["dlde"]["scores"]) == ["probability", "cosine", "vmf", "energy", "knn"]
    assert list(pooled["models"]["retinanet"]["scores"]) == ["probability", "energy"]
    assert pooled["models"]["dlde"]["scores"]["vmf"]["auroc"]["n"] <= 2
    by_seed = pooled["by_seed"]["1"]["models"]["dlde"]
    assert by_seed["primary_score"] == "cosine" and by_seed["vmf_kappa_source"] == "given"  # the tracked κ̂
    assert set(opened["retrieval"]) == {"dlde"} and 0.0 <= opened["retrieval"]["dlde"]["MAP@R"]["mean"] <= 1.0
    assert opened["retrieval"]["dlde"]["base_seeds"] == 2 and set(opened["retrieval_by_seed"]) == {"0", "1"}
    for name in ("retrieval_examples", "unknown_scores_dlde_cosine", "unknown_scores_over_seeds", "unknown_roc"):
        assert f"o_{name}" in opened["figures"]
    assert "o_unknown_scores_dlde_vmf" not in opened["figures"]  # SHOWN_SCORES: probability and cosine
    for name in few["figures"] + opened["figures"]:
        for suffix in (".png", ".pdf"):
            assert (figures_dir / f"{name}{suffix}").stat().st_size > 0, name


@pytest.mark.slow
def test_notebook_04_flags_unknown_objects_by_a_named_score(tmp_path):
    """UNKNOWN_SCORE picks the score of 04_inference's unknown flag; its threshold keeps
    UNKNOWN_KNOWN_RECALL of the run's validation detections of objects."""
    import shutil

    from dlde.train import TrainConfig, train

    run_dir = tmp_path / "runs" / "dlde"
    train(TrainConfig.from_dict({"run_dir": str(run_dir), "data_root": str(tmp_path / "data" / "digits"),
                                 "epochs": 1, "digits_train_images": 48}, preset="tiny"))
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((tmp_path / "data" / "digits" / "val").glob("*.png"))[:3]:
        shutil.copy(source, images / source.name)
    common = dict(RUN_DIR=str(run_dir), IMAGES_DIR=str(images), SCORE_THRESHOLD=0.0, FIGURES_DIR=str(tmp_path / "f"),
                  UNKNOWN_CALIBRATION_IMAGES=8, UNKNOWN_KNOWN_RECALL=0.5)
    for name in ("vmf", "energy", "none"):
        (tmp_path / name).mkdir()
    for score in ("vmf", "energy"):
        results = execute("04_inference.ipynb", tmp_path / score, **common, UNKNOWN_SCORE=score)
        flag = results["unknown_flag"]
        assert flag["score"] == score and flag["known_recall"] == 0.5 and math.isfinite(flag["threshold"])
        assert 0 < results["unknown_detections"] < results["detections"]  # some flagged, not all
    assert execute("04_inference.ipynb", tmp_path / "none", **common, UNKNOWN_SCORE="")["unknown_flag"] is None
    (tmp_path / "default").mkdir()
    default = execute("04_inference.ipynb", tmp_path / "default", **common)["unknown_flag"]
    assert default["score"] == "knn" and math.isfinite(default["threshold"])  # DLDENet's best unknown score
