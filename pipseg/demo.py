"""`pipseg demo`: the whole pipeline on the embedded synthetic dataset, sized for a 2-core CPU.

Generate a VOC-layout dataset, derive pseudo labels from its boxes, train the small model with
the PIP loss, score it against ground truth and draw a contact sheet. Every step reuses what an
earlier run left in the work folder, so a rerun is quick and an interrupted one resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pipseg.config import Config, load_config
from pipseg.data.dataset import SegDataset
from pipseg.data.labels import colorize, write_label
from pipseg.data.prepare import prepare_dataset
from pipseg.data.pseudo import make_pseudo
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from pipseg.device import resolve_device
from pipseg.engine.checkpoint import run_progress
from pipseg.engine.trainer import train
from pipseg.errors import PipsegError
from pipseg.evaluate import evaluate_checkpoint
from pipseg.inference import predict_probs
from pipseg.io import atomic_write
from pipseg.models import model_from_checkpoint
from pipseg.predict import overlay_image

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
StageFn = Callable[[str], None]


@dataclass
class DemoResult:
    """Where the demo's outputs are and what it measured."""

    workdir: Path
    data_root: Path
    run_dir: Path
    checkpoint: Path
    pseudo_source: str
    pseudo_miou: float  # pseudo labels vs ground truth on the train split
    model_miou: float  # model vs ground truth on the val split
    model_metrics: dict[str, Any]
    crf_miou: float | None
    predictions_dir: Path
    contact_sheet: Path
    trained_now: bool
    notes: list[str] = field(default_factory=list)


def demo_config(workdir: Path, config: Path | None, overrides: list[str] | None) -> Config:
    """The demo config with its data and run folders moved into ``workdir``."""
    path = config or DEFAULT_CONFIG
    if not path.is_file():
        raise PipsegError(f"{path}: demo config not found; pass --config configs/demo.yaml")
    moved = [f"data.root={workdir / 'data'}", f"runtime.out_dir={workdir / 'train'}"]
    return load_config(path, moved + list(overrides or []))


def _labelled(image: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((18, image.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def contact_sheet(rows: list[list[np.ndarray]], titles: list[str], gap: int = 4) -> np.ndarray:
    """Tile RGB panels: one row per image, one titled column per view, white gaps between."""
    tiles = []
    for row in rows:
        cells = [_labelled(cell, title) for cell, title in zip(row, titles, strict=True)]
        spacer = np.full((cells[0].shape[0], gap, 3), 255, np.uint8)
        tiles.append(np.concatenate([c for cell in cells for c in (cell, spacer)][:-1], axis=1))
    spacer = np.full((gap, tiles[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([t for tile in tiles for t in (tile, spacer)][:-1], axis=0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PipsegError(f"{path}: could not encode PNG")
    atomic_write(path, lambda tmp: tmp.write_bytes(data.tobytes()))


def show_predictions(
    cfg: Config, checkpoint: Path, pred_dir: Path, sheet: Path, *, n_show: int, device: torch.device
) -> None:
    """Predict the first ``n_show`` val images into ``pred_dir`` (label PNG and overlay each) and
    draw them beside their ground truth and pseudo labels on the contact sheet ``sheet``."""
    source = cfg.data.label_source
    model, meta = model_from_checkpoint(checkpoint, device=device)
    val = SegDataset(cfg.data, cfg.data.val_split, "gt", train=False)
    rows = []
    for index in range(min(n_show, len(val))):
        image, gt, boxes = val.load(index)
        image_id = val.ids[index]
        probs = predict_probs(model, image, pad_size=cfg.eval.pad_size, device=device)
        pred = probs.argmax(0).to(torch.uint8).cpu().numpy()
        pseudo = make_pseudo(source, image, boxes, cfg.crf)
        write_label(pred_dir / f"{image_id}.png", pred)
        _write_png(pred_dir / f"{image_id}_overlay.png", overlay_image(image, pred, meta["classes"]))
        rows.append([image, colorize(gt), colorize(pseudo), colorize(pred)])
    _write_png(sheet, contact_sheet(rows, ["image", "ground truth", f"pseudo ({source})", "prediction"]))


def run_demo(
    workdir: Path,
    *,
    config: Path | None = None,
    overrides: list[str] | None = None,
    n_train: int = 160,
    n_val: int = 40,
    n_show: int = 4,
    seed: int = 0,
    with_crf: bool = True,
    stage: StageFn | None = None,
    train_progress: Callable[[dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Run the whole pipeline in ``workdir`` and return what it measured and wrote."""
    stage = stage or (lambda name: None)
    workdir = Path(workdir).expanduser().resolve()
    cfg = demo_config(workdir, config, overrides)
    if [c.lower() for c in cfg.data.classes] != [c.lower() for c in SYNTHETIC_CLASSES]:
        raise PipsegError(f"data.classes must be the synthetic classes {SYNTHETIC_CLASSES} for the demo")
    source = cfg.data.label_source

    stage("generating the synthetic dataset")
    data_root = make_synthetic_voc(cfg.data.root, n_train=n_train, n_val=n_val, seed=seed)

    stage(f"deriving '{source}' pseudo labels from the boxes")
    report = prepare_dataset(data_root, out=cfg.data.prepared_dir, pseudo=(source,),
                             classes=list(SYNTHETIC_CLASSES), crf=cfg.crf)  # fmt: skip
    pseudo_miou = report.sources[source].miou.get("train", float("nan"))

    run_dir = cfg.runtime.out_dir
    done = run_progress(run_dir)
    trained_now = done is None or done[0] < done[1]
    if trained_now:
        stage(f"training {cfg.model.name} with the {cfg.loss.kind.upper()} loss")
        train(cfg, resume=done is not None, progress=train_progress)
    checkpoint = run_dir / "last.pt"

    stage("evaluating on the val split against ground truth")
    device = resolve_device(cfg.runtime.device, option="runtime.device")
    metrics, _ = evaluate_checkpoint(cfg, checkpoint, crf=with_crf, device=device)

    stage("writing predictions and the contact sheet")
    pred_dir, sheet = workdir / "predictions", workdir / "contact_sheet.png"
    show_predictions(cfg, checkpoint, pred_dir, sheet, n_show=n_show, device=device)

    return DemoResult(
        workdir=workdir, data_root=data_root, run_dir=run_dir, checkpoint=checkpoint,
        pseudo_source=source, pseudo_miou=pseudo_miou, model_miou=metrics["miou"],
        model_metrics=metrics, crf_miou=metrics["crf"]["miou"] if "crf" in metrics else None,
        predictions_dir=pred_dir, contact_sheet=sheet, trained_now=trained_now,
    )  # fmt: skip
