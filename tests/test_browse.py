"""`pipseg browse`: contact sheets of a prepared dataset, worst pseudo labels first."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from pipseg.browse import browse_dataset
from pipseg.cli import app
from pipseg.data.labels import VOC_PALETTE, read_label
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.visualize import IGNORE_RGB


def naive_miou(label: np.ndarray, gt: np.ndarray) -> float:
    """Image mIoU from the definition: classes present in either map, 255 in gt left out."""
    keep = gt != 255
    ious = []
    for c in range(len(SYNTHETIC_CLASSES)):
        union = np.sum(((label == c) | (gt == c)) & keep)
        if union:
            ious.append(np.sum((label == c) & (gt == c) & keep) / union)
    return float(np.mean(ious)) if ious else math.nan


def test_sheets_sorted_worst_first_with_a_legend(tmp_path: Path, prepared_root: Path) -> None:
    prepared = prepared_root / "pipseg"
    rows = browse_dataset(prepared, tmp_path / "out", split="train", per_sheet=5, height=64)
    ids = (prepared / "splits" / "train.txt").read_text().split()
    assert sorted(r.sample_id for r in rows) == sorted(ids)
    expected = {}
    for i in ids:
        gt = read_label(prepared_root / "SegmentationClass" / f"{i}.png")
        expected[i] = naive_miou(read_label(prepared / "pseudo" / "box" / f"{i}.png"), gt)
    assert [r.sample_id for r in rows] == sorted(ids, key=lambda i: expected[i])  # worst first
    for r in rows:
        assert abs(r.miou - expected[r.sample_id]) < 1e-9
    sheets = sorted((tmp_path / "out").glob("sheet_*.png"))
    assert len(sheets) == math.ceil(len(ids) / 5)
    first = cv2.cvtColor(cv2.imread(str(sheets[0])), cv2.COLOR_BGR2RGB)
    # 5 rows of 64-pixel pictures under their title bars, 8-pixel gaps; 3 columns (image, box, gt)
    assert first.shape[0] >= 5 * 64 + 4 * 8
    gt_present = set()
    for r in rows[:5]:
        gt_present |= set(np.unique(read_label(prepared_root / "SegmentationClass" / f"{r.sample_id}.png")).tolist())
    legend = first[:, -80:]
    for c in gt_present - {255}:
        assert (first == VOC_PALETTE[c]).all(-1).any()
    assert (first == IGNORE_RGB).all(-1).any() and (legend == 255).all(-1).any()


def test_cli_browse(tmp_path: Path, prepared_root: Path) -> None:
    result = CliRunner().invoke(app, ["browse", str(prepared_root / "pipseg"), "--out", str(tmp_path / "b"),
                                      "--limit", "3", "--per-sheet", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 images on 2 sheets" in result.output and "worst" in result.output
    bad = CliRunner().invoke(app, ["browse", str(prepared_root / "pipseg"), "--source", "sdi"])
    assert bad.exit_code == 2 and "sdi" in bad.output
    missing = CliRunner().invoke(app, ["browse", str(tmp_path)])
    assert missing.exit_code == 2 and "manifest.json" in missing.output
