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

import torch

from pipseg import visualize as viz
from pipseg.config import Config, load_config
from pipseg.data.dataset import SegDataset
from pipseg.data.labels import write_label
from pipseg.data.prepare import prepare_dataset
from pipseg.data.pseudo import make_pseudo
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from pipseg.device import resolve_device
from pipseg.engine.checkpoint import run_progress
from pipseg.engine.trainer import train
from pipseg.errors import PipsegError
from pipseg.evaluate import evaluate_checkpoint
from pipseg.inference import predict_probs
from pipseg.models import model_from_checkpoint
from pipseg.predict import output_paths, overlay_image

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
    predictions: int = 0  # val predictions written (every val image)
    notes: list[str] = field(default_factory=list)


def demo_config(workdir: Path, config: Path | None, overrides: list[str] | None) -> Config:
    """The demo config with its data and run folders moved into ``workdir``."""
    path = config or DEFAULT_CONFIG
    if not path.is_file():
        raise PipsegError(f"{path}: demo config not found; pass --config configs/demo.yaml")
    moved = [f"data.root={workdir / 'data'}", f"runtime.out_dir={workdir / 'train'}"]
    return load_config(path, moved + list(overrides or []))


def show_predictions(
    cfg: Config, checkpoint: Path, pred_dir: Path, sheet: Path, *, n_show: int, device: torch.device
) -> int:
    """Predict every val image into ``pred_dir`` (``<id>.png`` and ``<id>.overlay.png``, as
    `pipseg predict --overlay` names them) and draw the first ``n_show`` beside their ground truth
    and pseudo labels on the contact sheet ``sheet``, with a class legend. Returns how many
    predictions were written."""
    source = cfg.data.label_source
    model, meta = model_from_checkpoint(checkpoint, device=device)
    val = SegDataset(cfg.data, cfg.data.val_split, "gt", train=False)
    rows, shown = [], []
    for index in range(len(val)):
        image, gt, boxes = val.load(index)
        paths = output_paths(pred_dir, val.ids[index])
        probs = predict_probs(model, image, pad_size=cfg.eval.pad_size, device=device)
        pred = probs.argmax(0).to(torch.uint8).cpu().numpy()
        write_label(paths["label"], pred)
        viz.write_picture(paths["overlay"], overlay_image(image, pred, meta["classes"]))
        if index < n_show:
            pseudo = make_pseudo(source, image, boxes, cfg.crf)
            rows.append([image, viz.label_picture(gt), viz.label_picture(pseudo), viz.label_picture(pred)])
            shown += [gt, pseudo, pred]
    titles = ["image", "ground truth", f"pseudo ({source})", "prediction"]
    legend = viz.legend_rows(shown, meta["classes"]) if shown else []
    if rows:
        viz.write_picture(sheet, viz.contact_sheet(rows, titles, legend, ignore_row=True))
    return len(val)


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
    if cfg.data.classes is not None and [c.lower() for c in cfg.data.classes] != [c.lower() for c in SYNTHETIC_CLASSES]:
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
    written = show_predictions(cfg, checkpoint, pred_dir, sheet, n_show=n_show, device=device)

    return DemoResult(
        workdir=workdir, data_root=data_root, run_dir=run_dir, checkpoint=checkpoint,
        pseudo_source=source, pseudo_miou=pseudo_miou, model_miou=metrics["miou"],
        model_metrics=metrics, crf_miou=metrics["crf"]["miou"] if "crf" in metrics else None,
        predictions_dir=pred_dir, contact_sheet=sheet, trained_now=trained_now, predictions=written,
    )  # fmt: skip
