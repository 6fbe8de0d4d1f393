"""`pipseg refine`: self-training rounds on the tiny synthetic dataset with tiny_deeplab.

Oracles: boxes read from the VOC XML files with ElementTree, IoU counted from its definition,
and the weights of a plain `train` run with the same config."""

import shutil
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import Config, CRFConfig, validate_config
from pipseg.data.labels import read_label
from pipseg.data.manifest import load_manifest
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.engine import train
from pipseg.errors import PipsegError
from pipseg.refine import RelabelTask, refine, relabel_image

runner = CliRunner()


def make_cfg(root: Path, out_dir: Path) -> Config:
    raw = {
        "data": {"root": str(root), "classes": list(SYNTHETIC_CLASSES), "crop_size": 64,
                 "label_source": "box", "train_split": "train", "workers": 0},
        "model": {"name": "tiny_deeplab", "init": "none"},
        "optim": {"iters": 3, "batch_size": 4, "lr": 0.01},
        "runtime": {"device": "cpu", "out_dir": str(out_dir), "log_every": 1, "val_every": 3,
                    "ckpt_every": 3, "val_max_images": 2},
        "eval": {"pad_size": 97},
        "crf": {"iters": 2},
    }  # fmt: skip
    return validate_config(raw)


def voc_boxes(root: Path, sample_id: str) -> list[tuple[int, int, int, int, int]]:
    objects = ET.parse(root / "Annotations" / f"{sample_id}.xml").getroot().iter("object")
    return [
        (*(int(o.find(f"bndbox/{k}").text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")),
         SYNTHETIC_CLASSES.index(o.find("name").text))
        for o in objects
    ]  # fmt: skip


def naive_miou(pairs: list[tuple[np.ndarray, np.ndarray]], classes: int) -> float:
    ious = []
    for c in range(classes):
        inter = union = 0
        for pred, gt in pairs:
            valid = gt != 255
            inter += int(((pred == c) & (gt == c) & valid).sum())
            union += int((((pred == c) | (gt == c)) & valid).sum())
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


@pytest.fixture()
def dataset(prepared_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "VOC"
    shutil.copytree(prepared_root, root)
    return root


def test_one_round_registers_box_respecting_labels_and_a_rerun_skips_it(
    dataset: Path, tmp_path: Path
) -> None:
    cfg = make_cfg(dataset, tmp_path / "refine")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    result = runner.invoke(app, ["refine", str(config), "--rounds", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "refine-1" in result.output and "pseudo-label mIoU" in result.output

    manifest = load_manifest(dataset / "pipseg")
    entry = manifest["sources"]["refine-1"]
    ids = (dataset / "pipseg" / "splits" / "train.txt").read_text().split()
    folder = dataset / "pipseg" / entry["dirs"][0]["path"]
    pairs = []
    for sample_id in ids:
        label = read_label(folder / f"{sample_id}.png")
        boxes = voc_boxes(dataset, sample_id)
        for y, x in zip(*np.nonzero(label), strict=True):
            c = label[y, x]
            assert any(b[4] == c and b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes), (
                sample_id,
                y,
                x,
            )
        pairs.append((label, read_label(dataset / "SegmentationClass" / f"{sample_id}.png")))
    assert entry["counts"]["train"] == len(ids) and entry["for_splits"] == ["train"]
    assert entry["miou"]["train"] == pytest.approx(
        naive_miou(pairs, len(SYNTHETIC_CLASSES)), abs=1e-6
    )
    assert (tmp_path / "refine" / "round-1" / "last.pt").is_file()

    stamps = {
        p: p.stat().st_mtime_ns
        for p in [*folder.glob("*.png"), tmp_path / "refine" / "round-1" / "last.pt"]
    }
    again = runner.invoke(app, ["refine", str(config), "--rounds", "1", "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert again.output.count("(earlier)") >= 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert entry["coverage"] == 1.0  # without --agree every pixel keeps a label
    other = runner.invoke(app, ["refine", str(config), "--rounds", "1", "--agree"])
    assert other.exit_code == 2 and "--agree" in other.output and "--force" in other.output


def test_zero_rounds_is_a_plain_training_run(dataset: Path, tmp_path: Path) -> None:
    cfg = make_cfg(dataset, tmp_path / "refine")
    (result,) = refine(cfg, 0)
    assert result.label_source == "box" and result.round == 0 and not result.reused
    plain = train(make_cfg(dataset, tmp_path / "plain"))
    ours = torch.load(
        tmp_path / "refine" / "round-0" / "last.pt", map_location="cpu", weights_only=True
    )
    theirs = torch.load(plain.last_checkpoint, map_location="cpu", weights_only=True)
    for key, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][key], value, rtol=0, atol=0)
    assert result.val_miou == pytest.approx(plain.metrics["miou"])
    with pytest.raises(PipsegError, match="--rounds"):
        refine(cfg, -1)


def test_relabel_keeps_classes_in_their_boxes_and_falls_back_to_previous_labels(
    tmp_path: Path,
) -> None:
    h, w = 24, 32
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    probs = np.full((3, h, w), 0.01, np.float32)
    probs[1], probs[2] = 0.98, 0.001  # the model says class 1 everywhere and never class 2
    boxes = np.array([[2, 3, 12, 15, 1], [18, 4, 28, 20, 2]], np.int64)
    previous = np.zeros((h, w), np.uint8)
    previous[6:12, 20:25] = 2
    from pipseg.data.labels import write_label

    write_label(tmp_path / "prev.png", previous)
    task = RelabelTask(
        image, probs, boxes, tmp_path / "prev.png", None, tmp_path / "out.png", CRFConfig(iters=3)
    )
    assert relabel_image(task) == (None, h * w, h * w)
    label = read_label(tmp_path / "out.png")
    inside1 = np.zeros((h, w), bool)
    inside1[3:16, 2:13] = True
    assert (label[inside1] == 1).all() and not (label[~inside1] == 1).any()
    np.testing.assert_array_equal(label[:, 14:] == 2, previous[:, 14:] == 2)


def test_relabel_with_agree_ignores_box_pixels_that_disagree_with_the_previous_labels(
    tmp_path: Path,
) -> None:
    h, w = 24, 32
    image = np.full((h, w, 3), 128, np.uint8)
    probs = np.full((2, h, w), 0.02, np.float32)
    probs[1, 3:16, 2:13] = 0.98  # the model fills box 1 with class 1
    boxes = np.array([[2, 3, 12, 15, 1]], np.int64)
    previous = np.zeros((h, w), np.uint8)
    previous[5:12, 4:10] = 1  # the previous labels hold the object in part of the box
    gt = previous.copy()
    gt[0, 0] = 255
    from pipseg.data.labels import write_label

    write_label(tmp_path / "prev.png", previous)
    write_label(tmp_path / "gt.png", gt)
    task = RelabelTask(image, probs, boxes, tmp_path / "prev.png", tmp_path / "gt.png",
                       tmp_path / "plain.png", CRFConfig(iters=3))  # fmt: skip
    relabel_image(task)
    plain = read_label(tmp_path / "plain.png")
    counts, kept, total = relabel_image(replace(task, out=tmp_path / "out.png", agree=True))
    label = read_label(tmp_path / "out.png")
    inside = np.zeros((h, w), bool)
    inside[3:16, 2:13] = True
    assert (inside & (plain != previous)).sum() > 10  # the model and the previous labels differ
    expected = np.where(inside & (plain != previous), 255, plain)
    np.testing.assert_array_equal(label, expected)
    assert (kept, total) == ((expected != 255).sum(), h * w)
    keep = (expected != 255) & (gt != 255)
    oracle = np.array(
        [[((gt == a) & (expected == b) & keep).sum() for b in (0, 1)] for a in (0, 1)]
    )
    np.testing.assert_array_equal(counts, oracle)
