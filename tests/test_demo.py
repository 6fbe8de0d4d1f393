"""`pipseg demo` end to end on a few tiny images: every output exists and a rerun reuses them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.demo import run_demo

FAST = ["optim.iters=4", "optim.batch_size=4", "data.crop_size=48", "runtime.val_every=4",
        "runtime.ckpt_every=4", "runtime.log_every=2", "eval.pad_size=64", "runtime.device=cpu"]  # fmt: skip


def test_contact_sheet_has_a_legend_with_the_ignore_colour_explained():
    from pipseg import visualize as viz
    from pipseg.data.labels import VOC_PALETTE

    a = np.zeros((10, 12, 3), np.uint8)
    label = np.zeros((10, 12), np.uint8)
    label[:3] = 2
    label[-2:] = 255
    rows = viz.legend_rows([label], ["background", "disc", "ring"])
    sheet = viz.contact_sheet([[a, viz.label_picture(label)]] * 2, ["x", "y"], rows, ignore_row=True)
    legend = sheet[:, 2 * 12 + 4 :]
    assert (legend == VOC_PALETTE[2]).all(-1).any() and (legend == viz.IGNORE_RGB).all(-1).any()
    assert not (legend == VOC_PALETTE[1]).all(-1).any()  # "disc" is absent: no row


def test_demo_runs_and_reuses(tmp_path: Path):
    stages: list[str] = []
    result = run_demo(tmp_path, overrides=FAST, n_train=12, n_val=4, n_show=2, stage=stages.append)
    assert result.trained_now and any("training" in s for s in stages)
    for value in (result.pseudo_miou, result.model_miou, result.crf_miou):
        assert value is not None and 0.0 <= value <= 1.0 and not math.isnan(value)
    assert result.checkpoint.is_file() and (result.run_dir / "log.jsonl").is_file()
    sheet = np.asarray(Image.open(result.contact_sheet))
    assert sheet.shape[0] > 2 * 18 and sheet.shape[2] == 3
    predictions = sorted(p.name for p in result.predictions_dir.iterdir())
    assert len([p for p in predictions if p.endswith(".overlay.png")]) == 4 == result.predictions  # every val image
    legend = sheet[:, -60:]
    assert (legend == (224, 224, 224)).all(-1).any()  # the ignore swatch of the legend

    stamp = result.checkpoint.stat().st_mtime_ns
    again = run_demo(tmp_path, overrides=FAST, n_train=12, n_val=4, n_show=2, with_crf=False)
    assert not again.trained_now and again.crf_miou is None
    assert result.checkpoint.stat().st_mtime_ns == stamp
    assert again.model_miou == result.model_miou


def test_demo_cli(tmp_path: Path):
    args = ["demo", "--workdir", str(tmp_path), "--train-images", "8", "--val-images", "3", "--no-crf"]
    for item in FAST:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "model prediction (val)" in result.output and "contact sheet" in result.output
    bad = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--set", "optim.lr=-1"])
    assert bad.exit_code == 2 and "optim.lr" in bad.output
