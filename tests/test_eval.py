"""`pipseg eval`: folder scoring against torchmetrics, its errors, and the checkpoint mode."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from typer.testing import CliRunner

import pipseg.parallel
from pipseg.cli import app
from pipseg.data.dataset import SegDataset
from pipseg.data.labels import write_label
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.errors import PipsegError
from pipseg.evaluate import evaluate_folders, evaluate_model
from pipseg.models import CHECKPOINT_FORMAT, build_model

runner = CliRunner()
C = 6
SIZES = [(20, 30), (25, 17), (33, 33), (12, 40), (30, 22)]


def make_pairs(root: Path, seed: int = 0) -> tuple[Path, Path, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    gt_dir, pred_dir = root / "gt", root / "pred"
    gts, preds = [], []
    for i, hw in enumerate(SIZES):
        gt = rng.integers(0, C, hw).astype(np.uint8)
        gt[rng.random(hw) < 0.1] = 255
        pred = np.where(rng.random(hw) < 0.6, gt, rng.integers(0, C, hw)).astype(np.uint8)
        pred[gt == 255] = rng.integers(0, C, int((gt == 255).sum()))
        write_label(gt_dir / f"im{i}.png", gt)
        write_label(pred_dir / f"im{i}.png", pred)
        gts.append(gt)
        preds.append(pred)
    return pred_dir, gt_dir, preds, gts


def torchmetrics_scores(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    p = torch.cat([torch.from_numpy(x).long().flatten() for x in preds])
    t = torch.cat([torch.from_numpy(x).long().flatten() for x in gts])
    return {
        "miou": float(MulticlassJaccardIndex(C, average="macro", ignore_index=255)(p, t)),
        "pixel_accuracy": float(MulticlassAccuracy(C, average="micro", ignore_index=255)(p, t)),
        "mean_accuracy": float(MulticlassAccuracy(C, average="macro", ignore_index=255)(p, t)),
        "iou": MulticlassJaccardIndex(C, average="none", ignore_index=255)(p, t).tolist(),
    }


def test_folders_match_torchmetrics(tmp_path: Path) -> None:
    pred_dir, gt_dir, preds, gts = make_pairs(tmp_path)
    expected = torchmetrics_scores(preds, gts)
    for workers in (1, 3):
        got = evaluate_folders(pred_dir, gt_dir, num_classes=C, workers=workers)
        for key in ("miou", "pixel_accuracy", "mean_accuracy"):
            assert got[key] == pytest.approx(expected[key], abs=1e-6), key
        assert got["iou"] == pytest.approx(expected["iou"], abs=1e-6)
        assert got["num_images"] == len(SIZES)
    subset = evaluate_folders(pred_dir, gt_dir, ids=["im1", "im3"], num_classes=C)
    assert subset["miou"] == pytest.approx(torchmetrics_scores([preds[1], preds[3]], [gts[1], gts[3]])["miou"], abs=1e-6)


def test_cli_folder_mode_json_and_list(tmp_path: Path) -> None:
    pred_dir, gt_dir, preds, gts = make_pairs(tmp_path)
    (tmp_path / "ids.txt").write_text("im0\n\nim2\n")
    args = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", str(C),
            "--list", str(tmp_path / "ids.txt"), "--json", str(tmp_path / "s.json")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    expected = torchmetrics_scores([preds[0], preds[2]], [gts[0], gts[2]])
    assert saved["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert saved["num_images"] == 2 and len(saved["iou"]) == C and "fw_iou" in saved
    assert "mIoU" in result.output and f"{100 * expected['miou']:.2f}" in result.output


def test_errors_name_the_id(tmp_path: Path) -> None:
    pred_dir, gt_dir, preds, _ = make_pairs(tmp_path)
    base = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", str(C)]

    (pred_dir / "im1.png").unlink()
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "im1" in result.output and "no prediction" in result.output

    write_label(pred_dir / "im1.png", np.pad(preds[1], ((0, 3), (0, 5))))  # padded bottom/right
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "im1" in result.output and "--crop-padded" in result.output
    padded = runner.invoke(app, base + ["--crop-padded", "--json", str(tmp_path / "a.json")])
    assert padded.exit_code == 0, padded.output
    write_label(pred_dir / "im1.png", preds[1])
    plain = runner.invoke(app, base + ["--json", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())

    write_label(pred_dir / "im1.png", preds[1][:-1])  # smaller: never cropped
    result = runner.invoke(app, base + ["--crop-padded"])
    assert result.exit_code == 2 and "im1" in result.output
    assert plain.exit_code == 0

    write_label(pred_dir / "im1.png", np.full_like(preds[1], C))
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "im1" in result.output and f"class {C}" in result.output
    with pytest.raises(PipsegError, match="im1"):
        evaluate_folders(pred_dir, gt_dir, num_classes=C)

    result = runner.invoke(app, ["eval", "--pred", str(pred_dir)])
    assert result.exit_code == 2 and "--gt" in result.output


def test_cli_checkpoint_mode_with_crf(tmp_path: Path, synthetic_data_cfg) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model("tiny_deeplab", len(SYNTHETIC_CLASSES)).eval()
    torch.save({
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": model.name,
        "num_classes": model.num_classes, "classes": list(SYNTHETIC_CLASSES),
        "input_convention": model.input_convention.as_dict(), "config": {}, "iteration": 1,
    }, tmp_path / "ckpt.pt")  # fmt: skip
    cfg = {"data": {"root": str(synthetic_data_cfg.root), "classes": list(SYNTHETIC_CLASSES)},
           "model": {"name": "tiny_deeplab", "init": "none"}, "eval": {"pad_size": 97}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    args = ["eval", str(tmp_path / "cfg.yaml"), "--checkpoint", str(tmp_path / "ckpt.pt"), "--crf",
            "--device", "cpu", "--json", str(tmp_path / "s.json")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "IoU + CRF" in result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    dataset = SegDataset(synthetic_data_cfg, "val", "gt", train=False)
    direct = evaluate_model(model, dataset, num_classes=len(SYNTHETIC_CLASSES), pad_size=97)
    assert saved["miou"] == pytest.approx(direct["miou"]) and "miou" in saved["crf"]
    assert saved["num_images"] == len(dataset)

    mismatch = runner.invoke(app, args[:2] + ["--checkpoint", str(tmp_path / "ckpt.pt"), "--set", "data.classes=[a,b]"])
    assert mismatch.exit_code == 2


class BrokenPool:
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise PermissionError("no semaphores in this sandbox")


def test_folders_fall_back_to_one_process_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pred_dir, gt_dir, preds, gts = make_pairs(tmp_path)
    monkeypatch.setattr(pipseg.parallel, "ProcessPoolExecutor", BrokenPool)
    warned: list[str] = []
    seen: list[tuple[int, int]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the line goes to on_warning only
        got = evaluate_folders(pred_dir, gt_dir, num_classes=C, workers=3, on_warning=warned.append,
                               progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert got["miou"] == pytest.approx(torchmetrics_scores(preds, gts)["miou"], abs=1e-6)
    assert len(warned) == 1 and "no semaphores" in warned[0] and "\n" not in warned[0]
    assert seen[-1] == (len(SIZES), len(SIZES))
    with pytest.warns(RuntimeWarning, match="no semaphores") as record:  # no callback: warnings.warn, once
        evaluate_folders(pred_dir, gt_dir, num_classes=C, workers=3)
    assert len(record) == 1


def _tiny_checkpoint(tmp_path: Path, synthetic_data_cfg, pad: int = 97) -> tuple[torch.nn.Module, list[str]]:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model("tiny_deeplab", len(SYNTHETIC_CLASSES)).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # varied predictions
    torch.save({
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": model.name,
        "num_classes": model.num_classes, "classes": list(SYNTHETIC_CLASSES),
        "input_convention": model.input_convention.as_dict(), "config": {}, "iteration": 1,
    }, tmp_path / "ckpt.pt")  # fmt: skip
    cfg = {"data": {"root": str(synthetic_data_cfg.root), "classes": list(SYNTHETIC_CLASSES)},
           "model": {"name": "tiny_deeplab", "init": "none"}, "eval": {"pad_size": pad}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return model, ["eval", str(tmp_path / "cfg.yaml"), "--checkpoint", str(tmp_path / "ckpt.pt"), "--device", "cpu"]


def _rgb(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_show_dir_pictures_report_and_named_json(tmp_path: Path, synthetic_data_cfg) -> None:  # noqa: ANN001
    from html.parser import HTMLParser

    from pipseg.data.labels import VOC_PALETTE
    from pipseg.inference import predict_probs

    model, args = _tiny_checkpoint(tmp_path, synthetic_data_cfg)
    names = ["bg", "one", "two", "three", "four", "five"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    show = tmp_path / "show"
    result = runner.invoke(app, [*args, "--show-dir", str(show), "--json", str(tmp_path / "s.json"),
                                 "--classes", str(tmp_path / "names.txt"), "--alpha", "0.25"])  # fmt: skip
    assert result.exit_code == 0, result.output
    dataset = SegDataset(synthetic_data_cfg, "val", "gt", train=False)
    matrix = np.zeros((6, 6), np.int64)
    per_image = {}
    for i, sample_id in enumerate(dataset.ids):
        image, gt, _ = dataset.load(i)
        pred = predict_probs(model, image, pad_size=97).argmax(0).numpy()
        keep = gt != 255
        counts = np.zeros((6, 6), np.int64)
        np.add.at(counts, (gt[keep], pred[keep]), 1)
        matrix += counts
        union = counts.sum(0) + counts.sum(1) - np.diag(counts)
        per_image[sample_id] = np.mean(np.diag(counts)[union > 0] / union[union > 0])
        overlay = _rgb(show / "images" / f"{sample_id}.overlay.png")
        h, w = gt.shape
        assert overlay.shape[0] >= h and overlay.shape[1] > w  # the legend beside, not over the image
        blend = np.round(0.75 * image + 0.25 * VOC_PALETTE[pred].astype(float)).astype(np.uint8)
        expected = np.where(((pred != 0) & (pred != 255))[..., None], blend, image)
        assert (overlay[:h, :w] == expected).all()
        for c in np.unique(pred):  # one swatch per class present, in its colour
            assert (overlay[:, w:] == VOC_PALETTE[c]).all(-1).any()
        errors = _rgb(show / "images" / f"{sample_id}.errors.png")[:h, :w]
        assert ((errors == (40, 160, 40)).all(-1) == ((pred == gt) & keep)).all()
        assert ((errors == (220, 30, 30)).all(-1) == ((pred != gt) & keep)).all()
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["confusion"]["classes"] == names and saved["confusion"]["counts"] == matrix.tolist()
    iou = np.diag(matrix) / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))
    for c, name in enumerate(names):
        assert saved["per_class"][name]["iou"] == pytest.approx(iou[c], nan_ok=True)
    assert "three" in result.output and "triangle" not in result.output
    (tmp_path / "few.txt").write_text("bg\none\n")
    few = runner.invoke(app, [*args, "--classes", str(tmp_path / "few.txt")])
    assert few.exit_code == 2 and "--classes" in few.output and "6 classes" in few.output

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.src: list[str] = []

        def handle_starttag(self, tag, attrs) -> None:  # noqa: ANN001
            if tag == "img":
                self.src.append(dict(attrs)["src"])

    links = Links()
    links.feed((show / "report.html").read_text())
    worst_first = sorted(per_image, key=per_image.get)
    overlays = [s for s in links.src if s.endswith(".overlay.png")]
    assert overlays == [f"images/{i}.overlay.png" for i in worst_first]
    assert links.src[:2] == ["iou.png", "confusion.png"]
    heat = _rgb(show / "confusion.png")
    assert heat.shape[0] > 200 and heat.std() > 0


def test_show_dir_folder_mode_uses_images(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    pred_dir, gt_dir, preds, gts = make_pairs(tmp_path)
    images = tmp_path / "img"
    images.mkdir()
    for i, gt in enumerate(gts):
        PILImage.fromarray(np.full((*gt.shape, 3), 90, np.uint8)).save(images / f"im{i}.png")
    show = tmp_path / "show"
    args = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", str(C), "--show-dir", str(show),
            "--images", str(images), "--alpha", "0"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for i, gt in enumerate(gts):
        overlay = _rgb(show / "images" / f"im{i}.overlay.png")
        assert (overlay[: gt.shape[0], : gt.shape[1]] == 90).all()  # alpha 0: the image itself
        assert "class_" in (show / "report.html").read_text()
    missing = runner.invoke(app, [*args[:-4], "--images", str(tmp_path)])
    assert missing.exit_code == 2 and "--images" in missing.output
