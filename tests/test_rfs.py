"""Repeat-factor sampling (dlde.data.sampling) and the training epochs it makes (dlde.train.batches)."""
import json
import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dlde.data.sampling import epoch_copies, epoch_order, image_labels, repeat_factors
from dlde.data.transforms import collate
from dlde.train import TrainConfig, train
from dlde.train.batches import EpochBatches, epoch_generator, global_batches, make_loader, steps_per_epoch
from dlde.train.builders import build_datasets
from dlde.train.distributed import DistributedContext, shard_batches

# Five images, three classes: class 0 in images 0-3, class 1 in images 1 and 2 (twice in image 1),
# class 2 in image 2, image 4 empty. With t = 0.8, t N = 4 images: r(0) = 1, r(1) = sqrt(4 / 2),
# r(2) = sqrt(4 / 1); an image takes the largest factor of its classes.
TOY_LABELS = [[0], [0, 1, 1], [1, 0, 2], [0], []]
TOY_FACTORS = [1.0, math.sqrt(2.0), 2.0, 1.0, 1.0]


class Toy(Dataset):
    """Image i is a 3x8x8 tensor filled with i; its annotations hold ``labels[i]``."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def targets(self, index):
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(len(self.labels[index]), 1)
        return torch.cat([boxes, torch.tensor(self.labels[index], dtype=torch.float32).reshape(-1, 1)], 1)

    def __getitem__(self, index):
        return torch.full((3, 8, 8), float(index)), self.targets(index)


def toy_factors(threshold=0.8):
    return repeat_factors(*image_labels(Toy(TOY_LABELS)), len(TOY_LABELS), threshold)


def test_repeat_factors_equal_the_formula_on_a_toy():
    images, labels = image_labels(Toy(TOY_LABELS))
    assert images.tolist() == [0, 1, 1, 1, 2, 2, 2, 3] and labels.tolist() == [0, 0, 1, 1, 1, 0, 2, 0]
    np.testing.assert_allclose(toy_factors(), TOY_FACTORS, rtol=1e-12)
    np.testing.assert_allclose(toy_factors(0.2), 1.0)  # t N = 1 image: nothing is repeated
    with pytest.raises(ValueError, match="must be > 0"):
        toy_factors(0.0)
    with pytest.raises(ValueError, match="repeat_threshold"):  # refused when the config is made
        TrainConfig(repeat_threshold=0.0)


def test_stochastic_rounding_is_unbiased_and_each_epoch_rounds_down_or_up():
    factors = np.array([1.0, 1.25, 1.5, 2.0, 2.7, 3.1])
    copies = torch.stack([epoch_copies(factors, epoch_generator(0, epoch)) for epoch in range(4000)]).double()
    assert ((copies == np.floor(factors)) | (copies == np.ceil(factors))).all()
    torch.testing.assert_close(copies.mean(0), torch.from_numpy(factors), rtol=0, atol=0.03)  # 4 sd
    order = epoch_order(factors, epoch_generator(0, 7))
    torch.testing.assert_close(torch.bincount(order, minlength=len(factors)),
                               epoch_copies(factors, epoch_generator(0, 7)))


def test_the_order_depends_on_the_seed_and_the_epoch_alone():
    factors = np.linspace(1.0, 3.0, 50)
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first = epoch_order(factors, epoch_generator(3, 1))
    torch.testing.assert_close(epoch_order(factors, epoch_generator(3, 1)), first, rtol=0, atol=0)
    assert not torch.equal(epoch_order(factors, epoch_generator(3, 2)), first)
    assert not torch.equal(epoch_order(factors, epoch_generator(4, 1)), first)
    assert torch.equal(torch.get_rng_state(), states[0])  # the global generators were not touched
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), states[1]))
    assert random.getstate() == states[2]


def test_without_a_threshold_the_loader_and_its_counts_are_those_of_before():
    dataset, config = Toy([[0]] * 37), TrainConfig(seed=5, batch_size=8)
    loader = make_loader(dataset, config, shuffle=True, epoch=3)
    before = DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(5 * 1000 + 3))
    for (images, annotations), (old_images, old_annotations) in zip(loader, before, strict=True):
        torch.testing.assert_close(images, old_images, rtol=0, atol=0)
        torch.testing.assert_close(annotations, old_annotations, rtol=0, atol=0)
    for rank in (0, 1):
        shards = make_loader(dataset, config, shuffle=True, epoch=3, batch_size=8,
                             context=DistributedContext(rank=rank, world_size=2)).batch_sampler
        assert shards == shard_batches(global_batches(37, 8, True, torch.Generator().manual_seed(5003)), rank, 2)
    epochs = EpochBatches.of(dataset, config, world_size=2)
    assert epochs.factors is None and epochs.growth == 1.0
    assert [epochs.steps(e) for e in (1, 2)] == [steps_per_epoch(37, 8, 2)] * 2 and epochs.total_steps(3) == 9
    assert epochs.trained_images(1) == 37


def test_two_ranks_share_the_one_process_epoch_and_the_counts_are_the_loaders():
    labels = [[0, 1]] * 20 + [[0, 2]] * 5 + [[0, 3]] + [[0]] * 4  # 30 images, classes in 30, 20, 5 and 1
    dataset, config = Toy(labels), TrainConfig(seed=2, batch_size=4, repeat_threshold=0.2)
    factors = EpochBatches.of(dataset, config).factors
    np.testing.assert_allclose(factors[[0, 20, 25, 26]], [1.0, math.sqrt(6 / 5), math.sqrt(6.0), 1.0])
    for epoch in (1, 2, 3):
        single = make_loader(dataset, config, shuffle=True, epoch=epoch, batch_size=8, factors=factors)
        order = [index for batch in single.batch_sampler for index in batch]
        assert order == epoch_order(factors, epoch_generator(2, epoch)).tolist()
        assert [int(v) for images, _ in single for v in images[:, 0, 0, 0]] == order  # image i is filled with i
        shards = [make_loader(dataset, config, shuffle=True, epoch=epoch, batch_size=8, factors=factors,
                              context=DistributedContext(rank=rank, world_size=2)).batch_sampler for rank in (0, 1)]
        merged = [[i for pair in zip(a, b) for i in pair] + a[len(b):] for a, b in zip(*shards, strict=True)]
        assert merged == [batch for batch in single.batch_sampler if len(batch) >= 2]
        two = EpochBatches.of(dataset, config, world_size=2)
        assert two.steps(epoch) == len(shards[0])
        assert two.trained_images(epoch) == sum(map(len, merged))
        alone = make_loader(dataset, config, shuffle=True, epoch=epoch, factors=factors)  # one process, batch 4
        assert EpochBatches.of(dataset, config).steps(epoch) == len(alone)
    one = EpochBatches.of(dataset, config)
    assert one.total_steps(3) == sum(math.ceil(one.images(epoch) / 4) for epoch in (1, 2, 3))
    assert one.growth == pytest.approx(factors.mean())


@pytest.mark.slow
def test_a_run_with_repeat_factor_sampling_reports_the_images_it_trained(tmp_path):
    config = TrainConfig.from_dict({"run_dir": str(tmp_path / "run"), "data_root": str(tmp_path / "data"),
                                    "epochs": 1, "repeat_threshold": 1.0}, preset="tiny")
    result = train(config)
    row = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    epochs = EpochBatches.of(build_datasets(config)[0], config)
    assert row["train_images"] == epochs.images(1) == epochs.trained_images(1) > 32  # 32 canvases, some repeated
    assert row["repeat_growth"] == pytest.approx(epochs.growth) and epochs.growth > 1.0
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    assert json.loads((result.run_dir / "config.json").read_text())["config"]["repeat_threshold"] == 1.0
    state = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == epochs.total_steps(1)  # the schedule's length: the steps taken
