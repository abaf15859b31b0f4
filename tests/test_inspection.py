import numpy as np
import pytest
from PIL import Image

from dlde import build_detector
from dlde.analysis.inspection import matched_embeddings
from dlde.inference.detect import detect_folder, detection_samples, image_files
from dlde.pipeline.notebook import inference_results
from dlde.plots.detection_plots import detection_grid
from dlde.train import TrainConfig, train
from dlde.train.runs import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspection")
    config = TrainConfig.from_dict({"run_dir": str(root / "run"), "data_root": str(root / "data"), "epochs": 1},
                                   preset="tiny")
    train(config)
    return load_run(root / "run")


def test_load_run_reads_the_record(run):
    assert run.class_names == ["0", "1", "2"] and run.category_ids == [1, 2, 3]
    assert [row["epoch"] for row in run.metrics] == [1] and run.last["epoch"] == 1
    assert run.means_history.shape == (2, 3, 8) and run.kappa_history.shape == (2, 3)
    model = run.load_model()
    assert not model.training and model.classification.embedding_size == 8


def test_load_run_explains_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dlde run folder"):
        load_run(tmp_path)


def test_matched_embeddings_are_unit_vectors_with_valid_labels(run):
    model = run.load_model()
    _, val = run.datasets()
    embeddings, labels = matched_embeddings(model, val, max_images=8)
    assert embeddings.shape[1] == 8 and len(labels) == len(embeddings) > 0
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert labels.min() >= 0 and labels.max() < 3
    assert not model.training


def test_detections_come_back_in_original_pixels(run, tmp_path):
    model = run.load_model()
    model.score_threshold = 0.0
    _, val = run.datasets()
    samples = detection_samples(model, val, [0, 1], score_threshold=0.0)
    assert len(samples) == 2
    for sample in samples:
        h, w = sample["image"].shape[:2]
        assert sample["boxes"].shape[1] == 4 and len(sample["scores"]) == len(sample["labels"])
        assert (sample["boxes"][:, 2] <= w).all() and (sample["boxes"][:, 3] <= h).all()
        assert sample["gt_boxes"].shape[1] == 4
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(folder / "b.png")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    results = detect_folder(model, folder, min_size=64, max_size=64, score_threshold=0.0)
    assert [r["path"].rsplit("/", 1)[-1] for r in results] == ["a.jpg", "b.png"]
    assert results[1]["image"].shape == (50, 70, 3)
    assert (results[1]["boxes"][:, 2] <= 70).all() and (results[1]["boxes"][:, 3] <= 50).all()


def test_image_files_reports_empty_or_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        image_files(tmp_path)


def test_detections_far_from_every_class_direction_are_flagged_unknown(tmp_path):
    model = build_detector("dlde", 3, head_options={"embedding_size": 6}, features={"pyramid": 16, "regression": 16,
                           "classification": 16}, pretrained=False, head_convs=1, fpn_levels=[3, 4],
                           score_threshold=0.0).eval()
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    plain = detect_folder(model, folder, min_size=64, max_size=64, score_threshold=0.0)[0]
    everything = detect_folder(model, folder, min_size=64, max_size=64, score_threshold=0.0, unknown_below=1.01)[0]
    nothing = detect_folder(model, folder, min_size=64, max_size=64, score_threshold=0.0, unknown_below=-1.01)[0]
    assert len(plain["labels"]) > 0
    assert (everything["labels"] == -1).all() and everything["unknown"].all()  # every cosine is below 1.01
    np.testing.assert_array_equal(nothing["labels"], plain["labels"])  # and none below -1.01
    assert ((-1 <= everything["cosine"]) & (everything["cosine"] <= 1 + 1e-5)).all()
    everything["path"] = str(folder / "a.png")
    assert inference_results([everything], ["0", "1", "2"])["unknown_detections"] == len(everything["labels"])
    assert detection_grid([everything], ["0", "1", "2"]) is not None  # draws "unknown" boxes
    sigmoid = build_detector("retinanet", 3, features={"pyramid": 16, "regression": 16, "classification": 16},
                             pretrained=False, head_convs=1, fpn_levels=[3, 4]).eval()
    with pytest.raises(TypeError, match="no class directions"):
        detect_folder(sigmoid, folder, min_size=64, max_size=64, unknown_below=0.5)
