"""New classes without gradient steps (add_classes, imprint), the few-shot protocol, its base runs,
the unknown-object and retrieval protocols at tiny size, and notebooks 05/06."""
import math

import pytest
import torch
from helpers import SMALL, batch_annotations
from torch.testing import assert_close

from dlde import DLDENetWithTrackedMeans, RetinaNet
from dlde.analysis import fewshot
from dlde.analysis.openset_protocol import open_set_evaluation
from dlde.analysis.retrieval_protocol import retrieval_evaluation, retrieval_examples
from dlde.analysis.tables import few_shot_table
from dlde.model.growth import add_classes, imprint
from dlde.model.registry import head_factory
from dlde.pipeline.base_runs import base_config, ensure_base_run

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


def test_summarize_gives_the_t_interval_over_draws_and_the_forgetting():
    rows = [{"method": "dlde_imprint", "k": 1, "draw": j, "steps": 0, "seconds": 0.1, "novel_AP": ap,
             "novel_AP50": ap, "base_AP": 0.5, "base_AP50": 0.5} for j, ap in enumerate([1.0, 2.0, 3.0])]
    rows.append({**rows[0], "k": 2, "novel_AP": float("nan")})
    (entry, single) = fewshot.summarize({"rows": rows, "before": {"dlde": {"AP": 0.75}}})
    stats = entry["novel_AP"]
    assert list(stats) == ["mean", "sd", "low", "high", "n"]  # the key order results.json shows
    assert stats["mean"] == 2.0 and stats["sd"] == 1.0 and stats["n"] == 3
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}
    assert stats["low"] == pytest.approx(2.0 - half) and stats["high"] == pytest.approx(2.0 + half)
    assert entry["base_AP_before"] == 0.75 and entry["base_AP_drop"] == pytest.approx(0.25)
    assert single["draws"] == 1 and single["novel_AP"]["n"] == 0 and math.isnan(single["novel_AP"]["mean"])
    assert math.isnan(single["base_AP"]["low"])
    assert few_shot_table([entry, single]).splitlines()[2:] == [
        f"| dlde_imprint | 1 | 3 | 2.000 [{2 - half:.3f}, {2 + half:.3f}] | 2.000 [{2 - half:.3f}, {2 + half:.3f}] "
        "| 0.750 → 0.500 [0.500, 0.500] | 0 | 0.1 [0.1, 0.1] |",
        "| dlde_imprint | 2 | 1 | n/a | 1.000 | 0.750 → 0.500 | 0 | 0.1 |"]


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
    assert config.digits_classes == fewshot.BASE_CLASSES and config.model == "dlde"
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
    assert set(result["before"]) == set(models)
    assert len(result["rows"]) == 2 * 2 * len(fewshot.METHODS)
    for row in result["rows"]:
        for key in ("novel_AP", "novel_AP50", "base_AP", "base_AP50"):
            assert 0.0 <= row[key] <= 1.0 or math.isnan(row[key]), (row["method"], key)
        assert row["steps"] == (settings.steps if fewshot.METHODS[row["method"]][2] else 0)
        assert row["seconds"] > 0
    summary = fewshot.summarize(result)
    assert len(summary) == 2 * len(fewshot.METHODS) and all(e["draws"] == 2 for e in summary)
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
    assert out["images"] == 8 and out["known_objects"] + out["unknown_objects"] > 0
    assert set(out["models"]) == set(models)
    assert "cosine" in out["models"]["dlde"] and "cosine" not in out["models"]["retinanet"]
    for metrics in out["models"].values():
        assert isinstance(metrics["A-OSE"], int) and metrics["A-OSE_flagged"] <= metrics["A-OSE"]
    retrieval = retrieval_evaluation(models["dlde"], val_set, max_images=8)
    assert 0.0 <= retrieval["MAP@R"] <= 1.0 and 0.0 <= retrieval["Recall@1"] <= retrieval["Recall@5"] <= 1.0
    examples = retrieval_examples(val_set, retrieval, [0, 1], k=3)
    assert len(examples["query_crops"]) == 2 and len(examples["result_crops"][0]) == 3
    assert examples["result_labels"].shape == (2, 3)


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
    common = dict(RUN_DIR=str(run_dir), BASE_RUNS_DIR=str(base_dir), FIGURES_DIR=str(figures_dir), MAX_IMAGES=8)
    few = execute("05_few_shot.ipynb", tmp_path, **common, SHOTS="1,2", DRAWS=2, FINETUNE_STEPS=2,
                  DETECTION_IMAGES=2, FIGURE_PREFIX="f_")
    for head in ("dlde", "retinanet", "prototypes"):
        saved = TrainConfig.from_dict(__import__("json").loads((base_dir / head / "config.json").read_text())["config"])
        assert saved.model == head and saved.digits_classes == fewshot.BASE_CLASSES
        assert saved.epochs == 1 and saved.head_options == PRESETS["tiny"].head_options  # the run's budget
    assert few["shots"] == [1, 2] and few["draws"] == 2 and few["novel_names"] == ["7", "8", "9"]
    assert set(few["before"]) == {"dlde", "retinanet", "prototypes"}
    assert len(few["rows"]) == 2 * 2 * len(fewshot.METHODS) and len(few["summary"]) == 2 * len(fewshot.METHODS)
    expected = ["f_few_shot_novel_ap", "f_few_shot_novel_ap50", "f_few_shot_base_ap", "f_few_shot_detections",
                "f_few_shot_means_umap"]
    assert few["figures"] == expected
    mtimes = {head: (base_dir / head / "checkpoint.pt").stat().st_mtime for head in ("dlde", "retinanet")}
    opened = execute("06_open_set.ipynb", tmp_path, **common, HEADS="dlde,retinanet", RETRIEVAL_QUERIES=2,
                     RETRIEVAL_K=2, FIGURE_PREFIX="o_")
    # the cached base runs are reused, not retrained
    assert mtimes == {head: (base_dir / head / "checkpoint.pt").stat().st_mtime for head in mtimes}
    models = opened["open_set"]["models"]
    assert set(models) == {"dlde", "retinanet"} and models["dlde"]["primary_score"] == "cosine"
    assert set(opened["retrieval"]) == {"dlde"} and 0.0 <= opened["retrieval"]["dlde"]["MAP@R"] <= 1.0
    assert "o_retrieval_examples" in opened["figures"] and "o_unknown_scores_dlde_cosine" in opened["figures"]
    for name in few["figures"] + opened["figures"]:
        for suffix in (".png", ".pdf"):
            assert (figures_dir / f"{name}{suffix}").stat().st_size > 0, name
