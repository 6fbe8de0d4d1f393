"""TensorBoard scalars, read back with TensorBoard's own event reader."""

import math

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from pipseg.engine.tracking import TensorBoardTracker  # noqa: E402


def test_scalars_round_trip(tmp_path):
    tracker = TensorBoardTracker(tmp_path, enabled=True)
    tracker.log_train(10, {"iter": 10, "loss": 1.5, "lr": 0.01, "note": "x", "flag": True})
    tracker.log_train(20, {"iter": 20, "loss": 1.25, "lr": 0.009})
    tracker.log_val(20, {"miou": 0.5, "iou": [0.75, math.nan, 0.25]}, ["background", "cat", "dog"])
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/miou", "val_iou/background", "val_iou/dog"} <= tags
    assert "val_iou/cat" not in tags and "train/flag" not in tags and "train/iter" not in tags
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 1.5), (20, 1.25)]
    assert events.Scalars("val_iou/dog")[0].value == pytest.approx(0.25)


def test_disabled_writes_nothing(tmp_path):
    tracker = TensorBoardTracker(tmp_path, enabled=False)
    tracker.log_train(1, {"loss": 1.0})
    tracker.close()
    assert not (tmp_path / "tensorboard").exists()
