import pytest
import torch
from torch.testing import assert_close

from dlde.model.anchors import Anchors, assign_batch
from dlde.model.boxes import BoxCoder


def test_hand_computed_anchors_for_tiny_image():
    anchors = Anchors(sizes=[8], scales=[1.0], ratios=[1.0, 4.0], strides=[8])
    images = torch.zeros(2, 3, 8, 16)  # H = 8, W = 16 -> a 1 x 2 grid
    out = anchors(images)
    assert out.shape == (2, 4, 4)
    # location (0, 0) centred at (4, 4), then location (0, 1) centred at (12, 4); ratio 1 then ratio 4 (h = 2 w).
    expected = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, -4.0, 6.0, 12.0],
                             [8.0, 0.0, 16.0, 8.0], [10.0, -4.0, 14.0, 12.0]])
    assert_close(out[0], expected)
    assert_close(out[1], expected)


def test_anchor_order_and_counts_over_levels():
    anchors = Anchors(sizes=[16, 32], strides=[8, 16])
    assert anchors.num_anchors == 9
    assert anchors.grid_sizes(33, 17) == [(5, 3), (3, 2)]
    out = anchors.generate(33, 17)
    assert out.shape[0] == sum(anchors.level_counts(33, 17)) == 9 * (15 + 6)
    centres = (out[:, :2] + out[:, 2:]) / 2
    # Second location of level 0 is one stride to the right of the first.
    assert_close(centres[9] - centres[0], torch.tensor([8.0, 0.0]))
    # First anchor of level 1 is centred at (8, 8).
    assert_close(centres[9 * 15], torch.tensor([8.0, 8.0]))


def test_anchors_reject_mismatched_configuration():
    with pytest.raises(ValueError, match="one anchor size per stride"):
        Anchors(sizes=[32, 64], strides=[8])
    with pytest.raises(ValueError, match="positive"):
        Anchors(sizes=[-1], strides=[8])


def test_box_encode_decode_round_trip():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 45.0], [100.0, 50.0, 132.0, 66.0]])
    boxes = torch.tensor([[1.0, 2.0, 9.0, 12.0], [0.0, 0.0, 30.0, 30.0], [90.0, 40.0, 150.0, 80.0]])
    deltas = coder.encode(anchors, boxes)
    assert_close(coder.decode(anchors, deltas), boxes)
    assert_close(coder.encode(anchors, anchors), torch.zeros(3, 4))


def test_assign_thresholds_low_quality_and_no_mutation():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [50.0, 50.0, 60.0, 60.0],
                            [100.0, 100.0, 140.0, 140.0]])
    annotations = torch.tensor([[0.0, 0.0, 10.0, 10.0, 3.0], [100.0, 100.0, 110.0, 110.0, 1.0]])
    thresholds = {"object": 0.5, "background": 0.4}
    assigned, objects, background, ious = Anchors.assign(anchors, annotations, thresholds)[:4]
    assert thresholds == {"object": 0.5, "background": 0.4}
    assert objects.tolist() == [True, True, False, True]  # anchor 3 has IoU 1/16 but is object 1's best
    assert background.tolist() == [False, False, True, False]
    assert assigned[:, 4].tolist() == [3.0, 3.0, 3.0, 1.0]  # anchor 2 has IoU 0 with all; label unused
    assert_close(ious, torch.tensor([1.0, 100 / 120, 0.0, 100 / 1600]))
    _, objects, background, _ = Anchors.assign(anchors, annotations, thresholds, allow_low_quality_matches=False)
    assert objects.tolist() == [True, True, False, False]
    assert background.tolist() == [False, False, True, True]


def test_assign_without_annotations_is_all_background():
    anchors = Anchors(sizes=[8], strides=[8]).generate(16, 16)
    for annotations in (torch.zeros(0, 5), torch.full((3, 5), -1.0)):
        assigned, objects, background, ious = Anchors.assign(anchors, annotations)
        assert not objects.any() and background.all()
        assert (ious == 0).all() and assigned.shape == (anchors.shape[0], 5)


def test_batched_assign_ignores_padding_rows():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    annotations = torch.tensor([[[0.0, 0.0, 10.0, 10.0, 1.0], [-1.0, -1.0, -1.0, -1.0, -1.0]],
                                [[-1.0, -1.0, -1.0, -1.0, -1.0], [20.0, 20.0, 30.0, 30.0, 0.0]]])
    result = assign_batch(anchors, annotations)
    assert result.objects_mask.tolist() == [[True, False], [False, True]]
    assert result.assigned_annotations[0, 0, 4] == 1 and result.assigned_annotations[1, 1, 4] == 0


def test_bad_thresholds_are_rejected():
    anchors = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="'object'"):
        Anchors.assign(anchors, torch.zeros(0, 5), {"background": 0.4})
    with pytest.raises(ValueError, match="background <= object"):
        Anchors.assign(anchors, torch.zeros(0, 5), {"object": 0.3, "background": 0.4})
