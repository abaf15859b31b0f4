"""The equalized focal loss (EFL, Li et al. 2022): the focal loss while every class is balanced, a
growing focusing factor for a class whose negatives' gradients outweigh its positives', the
per-class loss against a dense autograd reference, its state in checkpoints, in training and
under torchrun."""
import os

import pytest
import torch
from helpers import SMALL, batch_annotations, free_port
from torch.testing import assert_close

from dlde import RetinaNet
from dlde.model import losses
from dlde.model.builders import build_detector, load_detector
from dlde.model.equalized_focal import EFL_SCALE, EqualizedFocal
from dlde.model.growth import add_classes
from dlde.model.losses import focal_loss_sum
from dlde.train import TrainConfig, build_model, distributed, train
from dlde.train.cli import _parser

HEADS = ("dlde", "retinanet", "prototypes")
EFL_KEYS = {"equalized_focal.positive_gradients", "equalized_focal.negative_gradients"}


@pytest.fixture(params=[None, 7], ids=["one-tile", "tiles-of-7-elements"])
def tiles(request, monkeypatch):
    """Run each test with the default tile and with tiles of one or two rows (the loop over tiles)."""
    if request.param is not None:
        monkeypatch.setattr(losses, "TILE_ELEMENTS", request.param)
    return request.param


def inputs(rows=30, classes=4, dtype=torch.float64, seed=0):
    """Probabilities ``(rows, C)``, valid rows, flat positive indices and their dense one-hot targets."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(rows, classes, generator=g, dtype=dtype) * 0.98 + 0.01
    valid = torch.rand(rows, generator=g) > 0.25
    positive_rows = valid.nonzero().squeeze(1)[::3]
    positives = positive_rows * classes + torch.randint(0, classes, (len(positive_rows),), generator=g)
    targets = torch.zeros(rows, classes, dtype=dtype)
    targets.view(-1)[positives] = 1
    return p, valid, positives, targets


def dense_loss(p, valid, targets, gamma, weight, alpha=0.25, eps=1e-6):
    """The per-class focal loss written out densely: ``weight_c`` times the focal loss of ``gamma_c``."""
    q = eps + (1 - 2 * eps) * p
    pairs = torch.where(targets == 1, alpha * (1 - q) ** gamma * -torch.log(q),
                        (1 - alpha) * q ** gamma * -torch.log1p(-q))
    return (pairs * weight * valid[:, None]).sum()


def dense_gradient_sums(p, valid, targets, gamma, weight):
    """``(positive (C,), negative (C,))``: per class, ``|dL/dp| p (1 - p)`` summed over positive and
    negative valid pairs, from autograd of :func:`dense_loss`."""
    x = p.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(dense_loss(x, valid, targets, gamma, weight), x)
    magnitude = grad.abs() * p * (1 - p) * valid[:, None]
    return (magnitude * targets).sum(0), (magnitude * (1 - targets)).sum(0)


def step(state, p, valid, positives):
    """One loss and backward with ``state``'s focusing; returns ``dL/dp``."""
    gamma, weight = state.focusing(p.dtype)
    x = p.clone().requires_grad_()
    loss = focal_loss_sum(x, valid, positives, gamma=gamma, weight=weight, gradient_sums=state.accumulate)
    loss.backward()
    return x.grad


# --------------------------------------------------------------------------------- the loss
def test_efl_with_every_class_balanced_is_the_focal_loss(tiles):
    p, valid, positives, _ = inputs(dtype=torch.float32)
    state = EqualizedFocal(4, gamma=2.0)
    gamma, weight = state.focusing()
    assert torch.equal(gamma, torch.full((4,), 2.0)) and torch.equal(weight, torch.ones(4))
    expected_p, p_efl = p.clone().requires_grad_(), p.clone().requires_grad_()
    expected = focal_loss_sum(expected_p, valid, positives, gamma=2.0)
    efl = focal_loss_sum(p_efl, valid, positives, gamma=gamma, weight=weight, gradient_sums=state.accumulate)
    assert_close(efl, expected)
    expected.backward()
    efl.backward()
    assert_close(p_efl.grad, expected_p.grad)


def test_efl_detector_with_a_fresh_state_has_the_focal_loss_and_gradients():
    torch.manual_seed(0)
    focal = RetinaNet(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4])
    efl = RetinaNet(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4], classification_loss="efl")
    efl.load_state_dict(focal.state_dict(), strict=False)  # the same weights; the EFL state stays fresh
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    results = []
    for model in (focal, efl):
        output = model.train()(images, batch_annotations())
        loss = model.loss(*output, batch_annotations(), assignment=output.assignment)["classification"]
        results.append((loss, torch.autograd.grad(loss, list(model.classification.parameters()))))
    assert_close(results[1][0], results[0][0])
    assert_close(results[1][1], results[0][1])
    assert efl.equalized_focal.negative_gradients.gt(0).all()  # the backward recorded the step


def test_gamma_grows_for_a_class_without_positives_and_stays_for_a_balanced_one():
    # Class 0: positives scored low (large gradients) and negatives scored low (small ones): its
    # positive gradient outweighs its negative gradient, so it stays balanced (g = 1) at gamma_b.
    # Class 1: one positive in the first step, none after: g falls, gamma climbs towards gamma_b + s.
    # Class 2: never a positive: g = 0 from the first step, gamma = gamma_b + s.
    state = EqualizedFocal(3, gamma=2.0, scale=EFL_SCALE)
    g = torch.Generator().manual_seed(0)
    gammas, balances = [], []
    for k in range(4):
        p = torch.rand(40, 3, generator=g, dtype=torch.float64) * 0.2 + 0.01
        p[:10, 0] = 0.1  # rows 0..9: class 0's positives
        positives = torch.arange(10) * 3
        if k == 0:
            p[10, 1] = 0.8  # an easy positive: a small gradient
            positives = torch.cat([positives, torch.tensor([10 * 3 + 1])])
        step(state, p, torch.ones(40, dtype=torch.bool), positives)
        gammas.append(state.focusing(torch.float64)[0])
        balances.append(state.balance())
    gammas, balances = torch.stack(gammas), torch.stack(balances)  # (steps, C)
    assert torch.equal(gammas[:, 0], torch.full((4,), 2.0))
    assert torch.equal(gammas[:, 2], torch.full((4,), 2.0 + EFL_SCALE))
    assert 0 < balances[0, 1] < 1 and (balances[1:, 1] < balances[:-1, 1]).all()  # g falls towards 0
    assert (gammas[1:, 1] > gammas[:-1, 1]).all() and gammas[-1, 1] < 2.0 + EFL_SCALE
    assert_close(gammas[:, 1], 2.0 + EFL_SCALE * (1 - balances[:, 1]))
    _, weight = state.focusing(torch.float64)
    assert_close(weight, gammas[-1] / 2.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_focal_loss_equals_the_dense_autograd_reference(tiles, seed):
    p, valid, positives, targets = inputs(seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    gamma = 2.0 + 8.0 * torch.rand(4, generator=g, dtype=torch.float64)
    weight = gamma / 2.0
    recorded = []
    x = p.clone().requires_grad_()
    loss = focal_loss_sum(x, valid, positives, gamma=gamma, weight=weight,
                          gradient_sums=lambda positive, negative: recorded.append((positive, negative)))
    y = p.clone().requires_grad_()
    expected = dense_loss(y, valid, targets, gamma, weight)
    assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    expected.backward()
    assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    ((positive, negative),) = recorded  # once per backward
    expected_positive, expected_negative = dense_gradient_sums(p, valid, targets, gamma, weight)
    assert_close(positive, expected_positive, rtol=1e-10, atol=1e-12)
    assert_close(negative, expected_negative, rtol=1e-10, atol=1e-12)


def test_per_class_focal_loss_gradcheck(tiles):
    p, valid, positives, _ = inputs(rows=9)
    gamma = torch.tensor([2.0, 3.5, 6.0, 10.0], dtype=torch.float64)
    p.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: focal_loss_sum(x, valid, positives, gamma=gamma, weight=gamma / 2), [p])


def test_the_state_adds_each_step_through_its_reducer():
    calls = []

    def doubling(sums):
        calls.append(sums.clone())
        return 2 * sums

    p, valid, positives, targets = inputs()
    state = EqualizedFocal(4, gamma=2.0)
    assert distributed.attach_equalized_focal_reducer(state, doubling) == 1
    step(state, p, valid, positives)
    ((sums,),) = [tuple(calls)]
    assert sums.shape == (2, 4) and sums.dtype == torch.float64
    expected = torch.stack(dense_gradient_sums(p, valid, targets, torch.full((4,), 2.0, dtype=torch.float64),
                                               torch.ones(4, dtype=torch.float64)))
    assert_close(sums, expected, rtol=1e-10, atol=1e-12)
    assert_close(torch.stack([state.positive_gradients, state.negative_gradients]), 2 * expected)
    with pytest.raises(FloatingPointError, match="non-finite"):
        state.accumulate(torch.full((4,), float("nan")), torch.zeros(4))
    assert_close(state.positive_gradients, 2 * expected[0])  # refused: unchanged


# ------------------------------------------------------------------------------ the detector
def test_a_focal_model_keeps_the_old_state_keys_and_old_checkpoints_load_as_focal(tmp_path):
    focal = RetinaNet(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3])
    efl = RetinaNet(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3], classification_loss="efl")
    assert focal.equalized_focal is None
    assert not any("equalized_focal" in key for key in focal.state_dict())
    assert set(efl.state_dict()) - set(focal.state_dict()) == EFL_KEYS
    assert set(focal.state_dict()) <= set(efl.state_dict())
    arguments = focal.constructor_arguments()
    assert (arguments["classification_loss"], arguments["efl_scale"]) == ("focal", EFL_SCALE)
    for key in ("classification_loss", "efl_scale"):  # written before the option existed
        arguments.pop(key)
    torch.save({"model": focal.state_dict(), "hyperparameters": {"model": arguments}}, tmp_path / "old.pt")
    restored = load_detector(tmp_path / "old.pt")
    assert restored.equalized_focal is None and restored.hyperparameters["classification_loss"] == "focal"
    with pytest.raises(ValueError, match="classification_loss"):
        RetinaNet(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3], classification_loss="eql")
    with pytest.raises(ValueError, match="focal_gamma > 0"):
        RetinaNet(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3], classification_loss="efl",
                  focal_gamma=0.0)


def test_the_state_is_saved_and_restored_with_the_model(tmp_path):
    model = build_detector("dlde", 3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4],
                           classification_loss="efl", efl_scale=4.0)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    output = model.train()(images, batch_annotations())
    losses_ = model.loss(*output, batch_annotations(), assignment=output.assignment)
    (losses_["classification"] + losses_["bbox_regression"]).backward()
    state = model.equalized_focal
    assert state.positive_gradients.gt(0).any() and state.negative_gradients.gt(0).all()
    model.save(tmp_path / "model.pt")
    restored = load_detector(tmp_path / "model.pt")
    assert restored.hyperparameters["classification_loss"] == "efl" and restored.equalized_focal.scale == 4.0
    assert torch.equal(restored.equalized_focal.positive_gradients, state.positive_gradients)
    assert torch.equal(restored.equalized_focal.negative_gradients, state.negative_gradients)
    assert all(torch.equal(a, b) for a, b in zip(restored.equalized_focal.focusing(), state.focusing()))


def test_grown_classes_start_balanced():
    model = build_detector("retinanet", 3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3],
                           classification_loss="efl")
    state = model.equalized_focal
    state.accumulate(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([4.0, 3.0, 2.0]))
    before = state.focusing()[0]
    assert add_classes(model, 2) == [3, 4]
    gamma, weight = state.focusing()
    assert gamma.shape == (5,) and torch.equal(gamma[:3], before)
    assert torch.equal(gamma[3:], torch.full((2,), 2.0)) and torch.equal(weight[3:], torch.ones(2))
    model.train()(torch.randn(2, 3, 64, 64), batch_annotations())  # the grown model still runs


def test_the_config_and_the_command_line_carry_the_option():
    config = TrainConfig.from_dict({"classification_loss": "efl", "efl_scale": 4.0}, preset="tiny")
    model = build_model(config, 3)
    assert isinstance(model.equalized_focal, EqualizedFocal) and model.equalized_focal.scale == 4.0
    assert build_model(TrainConfig.from_dict({}, preset="tiny"), 3).equalized_focal is None
    help_text = _parser("tiny").format_help()
    assert "--classification-loss" in help_text and "--efl-scale" in help_text


# ------------------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_one_epoch_with_efl_trains_each_head(tmp_path, head):
    config = TrainConfig.from_dict({"run_dir": str(tmp_path / head), "data_root": str(tmp_path / "data"),
                                    "model": head, "classification_loss": "efl", "epochs": 1,
                                    "max_train_batches": 2}, preset="tiny")
    result = train(config)
    (row,) = result.metrics
    assert all(torch.isfinite(torch.tensor(row[key])) for key in ("train_loss", "val_loss", "AP"))
    model = load_detector(tmp_path / head / "checkpoint.pt")
    assert model.classification.name == head
    assert model.equalized_focal.negative_gradients.gt(0).all()
    assert torch.equal(model.equalized_focal.positive_gradients, result.model.equalized_focal.positive_gradients)
    assert torch.equal(model.equalized_focal.negative_gradients, result.model.equalized_focal.negative_gradients)


@pytest.mark.slow
def test_a_resumed_efl_run_continues_with_the_saved_state(tmp_path, monkeypatch):
    import dlde.train.loop as training

    def config(name, **overrides):
        return TrainConfig.from_dict({"run_dir": str(tmp_path / name), "data_root": str(tmp_path / "data"),
                                      "model": "retinanet", "classification_loss": "efl", "epochs": 2,
                                      "max_train_batches": 2, **overrides}, preset="tiny")

    reference = train(config("reference"))
    real_validation = training.validation_loss
    calls = {"n": 0}

    def crash_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_validation(*args, **kwargs)

    monkeypatch.setattr(training, "validation_loss", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"))
    monkeypatch.setattr(training, "validation_loss", real_validation)
    resumed = train(config("resumed", resume=True))
    expected, state = reference.model.equalized_focal, resumed.model.equalized_focal
    assert_close(state.positive_gradients, expected.positive_gradients, rtol=1e-6, atol=0)
    assert_close(state.negative_gradients, expected.negative_gradients, rtol=1e-6, atol=0)
    assert resumed.metrics[-1]["train_loss"] == pytest.approx(reference.metrics[-1]["train_loss"], rel=1e-6)


def _efl_steps_worker(rank, world, port, out):
    """Three steps of a global batch of 4 (one process, or two of 2 each); rank 0 saves the EFL state
    after every step, and with two processes every step checks both hold the same bits."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = TrainConfig.from_dict({"model": "retinanet", "classification_loss": "efl"}, preset="tiny")
    torch.manual_seed(0)
    model = build_model(config, 3)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 4, 3, 64, 64, generator=generator)
    boxes = torch.tensor([[4.0, 4.0, 28.0, 30.0], [30.0, 20.0, 60.0, 52.0]])
    annotations = torch.cat([boxes.expand(3, 4, 2, 4), torch.randint(0, 2, (3, 4, 2, 1), generator=generator)], -1)
    network, reducer = model, None
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        model = distributed.convert_sync_batchnorm(model, torch.device("cpu"))  # the global batch's statistics
        assert distributed.attach_equalized_focal_reducer(model) == 1
        network = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        reducer = distributed.loss_normalizer
        images, annotations = images[:, rank::world], annotations[:, rank::world]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    history = []
    for k in range(3):
        output = network(images[k], annotations[k])
        losses_ = model.loss(*output, annotations[k], assignment=output.assignment, positives_reducer=reducer)
        optimizer.zero_grad()
        (losses_["classification"] + losses_["bbox_regression"]).backward()
        optimizer.step()
        state = torch.stack([model.equalized_focal.positive_gradients, model.equalized_focal.negative_gradients])
        if world > 1:
            gathered = [torch.empty_like(state) for _ in range(world)]
            torch.distributed.all_gather(gathered, state)
            assert all(torch.equal(g, state) for g in gathered), f"EFL state differs between ranks after step {k}"
        history.append(state)
    if rank == 0:
        torch.save(torch.stack(history), out)
    if world > 1:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_hold_the_same_efl_state_as_one_process_with_the_global_batch(tmp_path):
    threads = torch.get_num_threads()
    try:
        _efl_steps_worker(0, 1, 0, tmp_path / "one.pt")
    finally:
        torch.set_num_threads(threads)
    torch.multiprocessing.spawn(_efl_steps_worker, args=(2, free_port(), tmp_path / "two.pt"), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")  # (steps, 2, C)
    assert one[-1, 1].gt(0).all() and one[-1, 0, 2] == 0  # class 2 never had a positive
    assert_close(two, one, rtol=1e-4, atol=1e-6)  # the global batch's sums: the same up to rounding
