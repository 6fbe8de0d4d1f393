"""ConfusionMatrix, confusion_counts and scores_from_matrix against torchmetrics and hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from pipseg.metrics import ConfusionMatrix, confusion_counts, scores_from_matrix


def random_maps(seed: int, c: int, shape: tuple[int, ...], drop: tuple[int, ...] = ()):
    """Random prediction/target maps with ~15% ignore; classes in ``drop`` never appear."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([k for k in range(c) if k not in drop])
    pred = allowed[torch.randint(0, len(allowed), shape, generator=g)]
    target = allowed[torch.randint(0, len(allowed), shape, generator=g)]
    # Correlate them a little so scores are not all near chance.
    same = torch.rand(shape, generator=g) < 0.4
    pred = torch.where(same, target, pred)
    target[torch.rand(shape, generator=g) < 0.15] = 255
    return pred, target


def tm_scores(pred: torch.Tensor, target: torch.Tensor, c: int) -> dict[str, torch.Tensor]:
    kw = dict(num_classes=c, ignore_index=255)
    return {
        "iou": MulticlassJaccardIndex(average="none", **kw)(pred, target),
        "miou": MulticlassJaccardIndex(average="macro", **kw)(pred, target),
        "pixel_accuracy": MulticlassAccuracy(average="micro", **kw)(pred, target),
        "mean_accuracy": MulticlassAccuracy(average="macro", **kw)(pred, target),
        "accuracy": MulticlassAccuracy(average="none", **kw)(pred, target),
    }


def absent(pred: torch.Tensor, target: torch.Tensor, c: int) -> list[bool]:
    seen = set(pred[target != 255].tolist()) | set(target[target != 255].tolist())
    return [k not in seen for k in range(c)]


@pytest.mark.parametrize(
    ("seed", "c", "shape", "drop"),
    [
        (0, 2, (50, 40), ()),
        (1, 5, (3, 30, 31), ()),
        (2, 21, (2, 64, 64), ()),
        (3, 7, (4, 17, 9), (2, 5)),
        (4, 21, (1, 33, 47), (0, 7, 20)),
    ],
)
def test_matches_torchmetrics(
    seed: int, c: int, shape: tuple[int, ...], drop: tuple[int, ...]
) -> None:
    pred, target = random_maps(seed, c, shape, drop)
    cm = ConfusionMatrix(c)
    cm.update(pred, target)
    got = cm.compute()
    ref = tm_scores(pred, target, c)
    for key in ("miou", "pixel_accuracy", "mean_accuracy"):
        assert got[key] == pytest.approx(float(ref[key]), rel=1e-6), key
    missing = absent(pred, target, c)
    assert missing == [k in drop for k in range(c)]
    for key in ("iou", "accuracy"):
        for k in range(c):
            if missing[k]:
                assert math.isnan(got[key][k])
            else:
                assert got[key][k] == pytest.approx(float(ref[key][k]), rel=1e-6, abs=1e-12)
    # Frequency-weighted IoU from its definition: sum over classes of (target share) * IoU.
    keep = target != 255
    fw = sum(
        (target[keep] == k).float().mean().item() * ref["iou"][k].item()
        for k in range(c)
        if (target[keep] == k).any()
    )
    assert got["fw_iou"] == pytest.approx(fw, rel=1e-5)


def test_matrix_counts_by_hand() -> None:
    pred = np.array([[0, 1, 2], [2, 2, 0]])
    target = np.array([[0, 1, 1], [255, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 1]]
    scores = cm.compute()
    assert scores["iou"] == pytest.approx([1.0, 0.5, 0.5])
    assert scores["pixel_accuracy"] == pytest.approx(4 / 5)
    assert scores["mean_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_absent_class_is_nan_and_left_out_of_the_means() -> None:
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    s = cm.compute()
    assert math.isnan(s["iou"][2]) and math.isnan(s["iou"][3])
    assert math.isnan(s["accuracy"][2]) and math.isnan(s["accuracy"][3])
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s["mean_accuracy"] == pytest.approx((1 + 2 / 3) / 2)


def test_empty_matrix_scores_are_nan() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(4, dtype=torch.long), torch.full((4,), 255))
    s = cm.compute()
    assert all(math.isnan(s[k]) for k in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou"))


@pytest.mark.parametrize("bad", [-1, 3, 255])
def test_prediction_out_of_range_raises(bad: int) -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="prediction"):
        cm.update(torch.tensor([0, bad]), torch.tensor([0, 1]))
    assert cm.matrix.sum().item() == 0


@pytest.mark.parametrize("bad", [-1, 3, 254])
def test_target_out_of_range_raises(bad: int) -> None:
    with pytest.raises(ValueError, match="target"):
        ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, bad]))


def test_shape_and_dtype_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).update(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="integer"):
        ConfusionMatrix(3).update(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_merge_equals_one_update_over_the_concatenation() -> None:
    p1, t1 = random_maps(10, 6, (2, 20, 20))
    p2, t2 = random_maps(11, 6, (3, 20, 20))
    a, b, whole = ConfusionMatrix(6), ConfusionMatrix(6), ConfusionMatrix(6)
    a.update(p1, t1)
    b.update(p2, t2)
    whole.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(5))


def test_numpy_torch_batched_and_single_inputs_agree() -> None:
    pred, target = random_maps(12, 5, (3, 11, 13))
    from_torch, from_numpy, per_image = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    from_torch.update(pred, target)
    from_numpy.update(pred.numpy().astype(np.uint8), target.numpy().astype(np.uint8))
    for p, t in zip(pred, target, strict=True):
        per_image.update(p.numpy(), t)  # mixed numpy / torch
    assert torch.equal(from_torch.matrix, from_numpy.matrix)
    assert torch.equal(from_torch.matrix, per_image.matrix)
    assert from_torch.matrix.sum().item() == (target != 255).sum().item()


def test_reset_and_distributed_noop() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    before = cm.matrix.clone()
    cm.reduce_from_all_processes()  # not initialised: no-op
    assert torch.equal(cm.matrix, before)
    cm.reset()
    assert cm.matrix.sum().item() == 0 and cm.matrix.shape == (3, 3)


def test_custom_ignore_index() -> None:
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, -1, 2]))
    assert cm.matrix.sum().item() == 2


def test_confusion_counts_by_hand_and_uint8_inputs() -> None:
    pred = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    target = np.array([[0, 1, 1], [255, 2, 0]], np.uint8)  # uint8 labels as read from PNGs
    counts = confusion_counts(pred, target, 3)
    assert counts.dtype == np.int64 and counts.tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 1]]
    target[1, 0] = 1
    assert confusion_counts(pred, target, 3, ignore_index=0).tolist() == [[0, 0, 0], [0, 1, 2], [0, 0, 1]]


@pytest.mark.parametrize(("seed", "c"), [(5, 4), (6, 21)])
def test_numpy_counts_and_scores_match_torchmetrics(seed: int, c: int) -> None:
    pred, target = random_maps(seed, c, (2, 40, 33))
    counts = confusion_counts(pred.numpy().astype(np.uint8), target.numpy().astype(np.uint8), c)
    naive = np.zeros((c, c), np.int64)
    keep = target != 255
    np.add.at(naive, (target[keep].numpy(), pred[keep].numpy()), 1)
    np.testing.assert_array_equal(counts, naive)
    ref = tm_scores(pred, target, c)
    for matrix in (counts, torch.from_numpy(counts)):
        got = scores_from_matrix(matrix)
        for key in ("miou", "pixel_accuracy", "mean_accuracy"):
            assert got[key] == pytest.approx(float(ref[key]), rel=1e-6), key
        assert got["iou"] == pytest.approx(ref["iou"].tolist(), rel=1e-6)
