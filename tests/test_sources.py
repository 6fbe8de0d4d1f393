"""`prepare` label sources beyond the paper's: consensus labels (against a naive numpy
implementation of their definition), their mIoU on labelled pixels and coverage, and SDI/WSSL
maps whose objects all became ignore (counted, not an error)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.data.labels import read_label, write_label
from pipseg.data.manifest import load_manifest
from pipseg.data.prepare import prepare_dataset
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.data.voc import read_voc_boxes

runner = CliRunner()


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "VOC"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("pipseg"))
    return dst


def _naive_consensus(grabcut: np.ndarray, crf: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per pixel, from the definition: outside every box background; inside a box the class where
    the two labels agree, else 255."""
    h, w = grabcut.shape
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            inside = any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1, _ in boxes.tolist())
            if inside:
                out[y, x] = grabcut[y, x] if grabcut[y, x] == crf[y, x] else 255
    return out


def _naive_scores(root: Path, ids: list[str], c: int) -> tuple[float, float]:
    """mIoU on the pixels the consensus labels (and the ground truth does not ignore), and the
    share of its pixels not 255 over all its maps."""
    inter, union, labelled, total = np.zeros(c), np.zeros(c), 0, 0
    for i in ids:
        gt = read_label(root / "SegmentationClass" / f"{i}.png")
        pred = read_label(root / "pipseg/pseudo/consensus" / f"{i}.png")
        valid = (gt != 255) & (pred != 255)
        for k in range(c):
            g, p = (gt == k) & valid, (pred == k) & valid
            inter[k] += (g & p).sum()
            union[k] += (g | p).sum()
    for path in (root / "pipseg/pseudo/consensus").glob("*.png"):
        pred = read_label(path)
        labelled, total = labelled + int((pred != 255).sum()), total + pred.size
    return float((inter[union > 0] / union[union > 0]).mean()), labelled / total


@pytest.mark.parametrize("order", ["with-sources", "alone"])
def test_consensus_against_naive_definition(synthetic_root: Path, tmp_path: Path, order: str) -> None:
    root = _copy(synthetic_root, tmp_path)
    pseudo = ["grabcut", "crf", "consensus"] if order == "with-sources" else ["consensus"]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    args = ["prepare", "--voc-root", str(root), "--pseudo", ",".join(pseudo), "--workers", "2",
            "--classes", str(classes)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    source = load_manifest(root / "pipseg")["sources"]["consensus"]
    if order == "alone":  # the two sources are made in the worker, not kept
        assert not (root / "pipseg/pseudo/grabcut").exists()
        prepare_dataset(root, pseudo=["grabcut", "crf"], classes=SYNTHETIC_CLASSES, workers=1)
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    for i in train[:6]:
        boxes = read_voc_boxes(root / "Annotations" / f"{i}.xml", SYNTHETIC_CLASSES).boxes
        expect = _naive_consensus(read_label(root / "pipseg/pseudo/grabcut" / f"{i}.png"),
                                  read_label(root / "pipseg/pseudo/crf" / f"{i}.png"), boxes)  # fmt: skip
        np.testing.assert_array_equal(read_label(root / "pipseg/pseudo/consensus" / f"{i}.png"), expect)
    miou, coverage = _naive_scores(root, train, len(SYNTHETIC_CLASSES))
    assert source["miou"]["train"] == pytest.approx(miou, abs=1e-9)
    assert source["coverage"] == pytest.approx(coverage, abs=1e-12) and coverage < 1.0
    text = " ".join(result.output.split())
    assert f"{100 * miou:.1f}" in text and f"{100 * coverage:.1f}%" in text


@pytest.mark.parametrize("kind", ["sdi", "wssl"])
def test_external_labels_of_only_background_and_ignore_are_counted(
    prepared_root: Path, tmp_path: Path, kind: str
) -> None:
    root = _copy(prepared_root, tmp_path)
    folder = tmp_path / kind
    folder.mkdir()
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    for i in train:
        shutil.copy(root / "SegmentationClass" / f"{i}.png", folder / f"{i}.png")
    emptied = sorted(train)[3:6]
    for i in emptied:  # every object of these images became ignore, as SDI leaves some
        gt = read_label(folder / f"{i}.png")
        write_label(folder / f"{i}.png", np.where(gt > 0, 255, 0).astype(np.uint8))
    write_label(folder / f"{emptied[0]}.png", np.zeros_like(read_label(folder / f"{emptied[0]}.png")))
    result = runner.invoke(app, ["prepare", "--voc-root", str(root), f"--{kind}", str(folder),
                                 "--workers", "1", "--out", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"3 {kind} label maps hold only background and ignore" in text
    assert all(f"{i}.png" in text for i in emptied)
    assert load_manifest(tmp_path / "out")["sources"][kind]["background_only"] == 3
