"""DenseCRF against pydensecrf called directly, the crf pseudo labels built on it, and the
resumable parallel folder runner."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from PIL import Image
from pydensecrf.utils import unary_from_softmax
from typer.testing import CliRunner

import pipseg.parallel
from pipseg.cli import app
from pipseg.config import CRFConfig
from pipseg.crf import DenseCRF, load_probs, save_probs
from pipseg.crf.folder import crf_folder
from pipseg.data.labels import read_label
from pipseg.data.pseudo import MIN_KEEP, box_prior, crf_label

C = 3


def scene(seed: int, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An image with three colour regions and noisy probabilities that disagree with it in places."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 3 :] = 1
    truth[h // 2 :, 2 * w // 3 :] = 2
    colours = np.array([[20, 30, 200], [220, 40, 30], [40, 200, 60]])
    image = np.clip(colours[truth] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    logits = np.eye(C)[truth].transpose(2, 0, 1) * 1.5 + rng.normal(0, 1.0, (C, h, w))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return image, probs.astype(np.float32)


def direct_pydensecrf(image: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The textbook pydensecrf call with docs/METHOD.md section 4 settings."""
    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, C)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=120, srgb=5, rgbim=np.ascontiguousarray(image), compat=5)
    q = np.array(d.inference(10)).reshape(C, h, w)
    return q, q.argmax(0).astype(np.uint8)


def test_dense_crf_equals_pydensecrf() -> None:
    image, probs = scene(0)
    q_ref, labels_ref = direct_pydensecrf(image, probs)
    crf = DenseCRF()
    np.testing.assert_array_equal(crf(image, probs), labels_ref)
    np.testing.assert_allclose(crf.refine(image, probs), q_ref, rtol=0, atol=1e-6)
    assert (labels_ref != probs.argmax(0)).any(), "the scene must let the CRF change something"
    assert DenseCRF.from_config(CRFConfig()) == crf


def test_dense_crf_casts_inputs() -> None:
    image, probs = scene(1)
    expected = DenseCRF()(image, probs)
    assert expected.dtype == np.uint8 and expected.shape == image.shape[:2]
    fortran_probs = np.asfortranarray(probs.astype(np.float64))  # float64, not C-contiguous
    strided_image = np.asfortranarray(image.astype(np.int64))
    np.testing.assert_array_equal(DenseCRF()(strided_image, fortran_probs), expected)
    np.testing.assert_array_equal(DenseCRF()(image, probs.transpose(0, 2, 1).copy().transpose(0, 2, 1)), expected)
    read_only = image.copy()
    read_only.setflags(write=False)
    np.testing.assert_array_equal(DenseCRF()(read_only, probs), expected)
    with pytest.raises(ValueError, match="same H, W"):
        DenseCRF()(image[:-1], probs)


def make_folder(root: Path, n: int = 4) -> tuple[Path, Path]:
    images, probs = root / "images", root / "probs"
    for i in range(n):
        image, p = scene(10 + i)
        (images / "sub").mkdir(parents=True, exist_ok=True)
        name = f"sub/im{i}" if i == 0 else f"im{i}"
        Image.fromarray(image).save(images / f"{name}.png")
        save_probs(probs / f"{name}.npz", p)
    return images, probs


def expected_labels(images: Path, probs: Path, name: str) -> np.ndarray:
    image = np.asarray(Image.open(images / f"{name}.png"))
    return DenseCRF()(image, load_probs(probs / f"{name}.npz"))


def test_crf_folder_parallel_and_resumable(tmp_path: Path) -> None:
    images, probs = make_folder(tmp_path)
    out = tmp_path / "out"
    seen = []
    summary = crf_folder(images, probs, out, DenseCRF(), workers=2, progress=lambda d, t: seen.append((d, t)))
    assert (summary.written, summary.skipped, summary.failed, summary.warnings) == (4, 0, [], [])
    assert seen[-1] == (4, 4)
    for name in ("sub/im0", "im1", "im2", "im3"):
        np.testing.assert_array_equal(read_label(out / f"{name}.png"), expected_labels(images, probs, name))

    again = crf_folder(images, probs, out, DenseCRF(), workers=2)
    assert (again.written, again.skipped) == (0, 4)
    (out / "im2.png").unlink()
    (images / "im3.png").unlink()
    (out / "im3.png").unlink()
    resumed = crf_folder(images, probs, out, DenseCRF(), workers=2)
    assert (resumed.written, resumed.skipped) == (1, 2)
    assert [sample_id for sample_id, _ in resumed.failed] == ["im3"]
    assert (out / "im2.png").exists() and not (out / "im3.png").exists()


class BrokenPool:
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise PermissionError("no semaphores in this sandbox")


def test_crf_folder_falls_back_to_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, probs = make_folder(tmp_path, n=3)
    monkeypatch.setattr(pipseg.parallel, "ProcessPoolExecutor", BrokenPool)
    warned = []
    summary = crf_folder(images, probs, tmp_path / "out", DenseCRF(), workers=2, on_warning=warned.append)
    assert summary.written == 3 and summary.workers == 1
    assert len(summary.warnings) == 1 and "no semaphores" in summary.warnings[0] and warned == summary.warnings
    assert "\n" not in summary.warnings[0]
    for name in ("sub/im0", "im1", "im2"):
        np.testing.assert_array_equal(read_label(tmp_path / "out" / f"{name}.png"), expected_labels(images, probs, name))


def test_cli_crf(tmp_path: Path) -> None:
    images, probs = make_folder(tmp_path, n=2)
    args = ["crf", "--images", str(images), "--probs", str(probs), "--out", str(tmp_path / "o"), "-j", "1", "--set", "crf.iters=5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(images / "im1.png"))
    np.testing.assert_array_equal(
        read_label(tmp_path / "o" / "im1.png"), DenseCRF(iters=5)(image, load_probs(probs / "im1.npz"))
    )
    missing = CliRunner().invoke(app, ["crf", "--images", str(tmp_path / "nope"), "--probs", str(probs)])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_crf_folder_fallback_warns_once_without_a_callback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, probs = make_folder(tmp_path, n=3)
    monkeypatch.setattr(pipseg.parallel, "ProcessPoolExecutor", BrokenPool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the line goes to summary.warnings only, not also to warnings
        summary = crf_folder(images, probs, tmp_path / "out", DenseCRF(), workers=2)
    assert summary.written == 3 and len(summary.warnings) == 1


def reference_crf_label(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """pydensecrf called directly on the box prior, then each box painted (largest first) with the
    pixels whose winner is its label, or filled when it keeps less than MIN_KEEP of its area."""
    h, w = image.shape[:2]
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1), kind="stable")
    boxes = boxes[order]
    prior = box_prior(boxes, h, w)
    d = dcrf.DenseCRF2D(w, h, len(prior))
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(prior)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=120, srgb=5, rgbim=np.ascontiguousarray(image), compat=5)
    winner = np.array(d.inference(10)).reshape(len(prior), h, w).argmax(0)
    label = np.zeros((h, w), np.uint8)
    for k, (x0, y0, x1, y1, cls) in enumerate(boxes.tolist()):
        inside = winner[y0 : y1 + 1, x0 : x1 + 1] == 1 + k
        region = label[y0 : y1 + 1, x0 : x1 + 1]
        region[inside if inside.mean() >= MIN_KEEP else slice(None)] = cls
    return label


def test_crf_pseudo_labels_are_dense_crf_on_the_box_prior() -> None:
    image, _ = scene(20, 40, 48)  # three colour regions; boxes that overshoot them
    boxes = np.array([[10, 0, 47, 39, 1], [28, 18, 47, 39, 2], [0, 0, 3, 3, 1]], np.int64)
    expected = reference_crf_label(image, boxes)
    read_only = image.copy()
    read_only.setflags(write=False)  # as images decoded by PIL come
    got = crf_label(read_only, boxes)
    np.testing.assert_array_equal(got, expected)
    filled = np.zeros_like(expected)
    for x0, y0, x1, y1, cls in boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1))]:
        filled[y0 : y1 + 1, x0 : x1 + 1] = cls
    assert (got != filled).any(), "the scene must let the CRF trim a box"
    custom = crf_label(image, boxes, CRFConfig(iters=3, bilateral_srgb=20))
    assert not np.array_equal(custom, got), "the crf settings reach DenseCRF"


def test_crf_class_imports_light() -> None:
    """pseudo labels use DenseCRF; the class must not pull in torch, the runner or pipseg.data."""
    code = ("import sys, pipseg.crf, pipseg.data.pseudo; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('pipseg.crf.', 'pipseg.parallel'))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_crf_on_the_padded_canvas_is_pydensecrf_on_the_padded_canvas(tmp_path: Path) -> None:
    """eval.crf_canvas=padded (the published code, docs/METHOD.md section 6): DenseCRF on the
    whole padded canvas (image padded bottom/right with black), then cropped."""
    import torch

    from pipseg.evaluate import evaluate_model
    from pipseg.inference import predict_probs_batch
    from pipseg.models import CHECKPOINT_FORMAT, build_model

    torch.manual_seed(1)
    model = build_model("tiny_deeplab", C).eval()
    torch.nn.init.normal_(model.classifier.weight, std=5.0)
    image, _ = scene(3, h=40, w=52)
    canvas = predict_probs_batch(model, [image], pad_size=65, crop=False)[0].numpy()
    assert canvas.shape == (C, 65, 65)
    padded = np.zeros((65, 65, 3), np.uint8)
    padded[:40, :52] = image
    d = dcrf.DenseCRF2D(65, 65, C)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(canvas)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=120, srgb=5, rgbim=padded, compat=5)
    expected = np.array(d.inference(10)).reshape(C, 65, 65).argmax(0)[:40, :52]
    on_image = DenseCRF()(image, np.ascontiguousarray(canvas[:, :40, :52]))
    assert (expected != on_image).any(), "the two canvases must differ on this image"

    seen = {}
    target = np.zeros((40, 52), np.uint8)
    for where in ("image", "padded"):
        evaluate_model(model, [(image, target, "x")], num_classes=C, pad_size=65, crf=DenseCRF(), crf_canvas=where,
                       on_image=lambda i, im, t, label, w=where: seen.__setitem__(w, label))  # fmt: skip
    np.testing.assert_array_equal(seen["padded"], expected)
    np.testing.assert_array_equal(seen["image"], on_image)

    Image.fromarray(image).save(tmp_path / "im.png")
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": model.name,
                "num_classes": C, "classes": [f"c{i}" for i in range(C)],
                "input_convention": model.input_convention.as_dict(),
                "config": {"eval": {"pad_size": 65, "crf_canvas": "padded"}}}, tmp_path / "m.pt")  # fmt: skip
    args = ["predict", str(tmp_path / "im.png"), "-c", str(tmp_path / "m.pt"), "--crf", "--device", "cpu"]
    for extra, want in (([], expected), (["--crf-canvas", "image"], on_image)):  # the checkpoint's, then told
        out = tmp_path / f"out{len(extra)}"
        result = CliRunner().invoke(app, [*args, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(read_label(out / "im.png"), want)
