import numpy as np
import pytest
from PIL import Image

from dlde.inspection import detect_folder, detection_samples, image_files, matched_embeddings
from dlde.runs import load_run
from dlde.train import TrainConfig, train


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
