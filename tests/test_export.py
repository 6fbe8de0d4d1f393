"""Exported ONNX (run in onnxruntime) and TorchScript files against the eager model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.errors import PipsegError
from pipseg.export import export_model, sidecar_path
from pipseg.models import CHECKPOINT_FORMAT, build_model

CLASSES = ["bg", "a", "b"]
SIZES = [(1, 40, 56), (2, 33, 71)]  # (batch, height, width); neither is the export example size


def eager_probs(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """The reference, written out: normalise by hand, forward, upsample (align_corners), softmax."""
    conv = model.input_convention
    x = images.double()
    if conv.bgr:
        x = x.flip(1)
    x = (x / conv.scale - torch.tensor(conv.mean).view(1, 3, 1, 1)) / torch.tensor(conv.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x.float())
    up = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
    return up.softmax(1).numpy()


def random_images(batch: int, h: int, w: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8).to(dtype)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("tiny_deeplab", len(CLASSES))
    model.train()(torch.randn(2, 3, 40, 40))  # non-trivial BatchNorm statistics
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    return model.eval()


def test_onnx_matches_eager(tmp_path: Path, tiny: torch.nn.Module) -> None:
    out = tmp_path / "tiny.onnx"
    info = export_model(tiny, {"model_name": tiny.name, "classes": CLASSES}, out, input_dtype="uint8", with_labels=True)
    assert info["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probs", "labels"]
    for seed, (b, h, w) in enumerate(SIZES):
        images = random_images(b, h, w, torch.uint8, seed)
        probs, labels = session.run(None, {"images": images.numpy()})
        expected = eager_probs(tiny, images)
        assert probs.shape == (b, len(CLASSES), h, w) and labels.shape == (b, h, w)
        assert np.abs(probs - expected).max() <= 1e-4
        agree = (labels == expected.argmax(1)).mean()
        assert agree > 0.999  # ties within float noise may flip a pixel
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["classes"] == CLASSES and meta["input"]["dtype"] == "uint8"
    assert meta["input_convention"]["name"] == tiny.input_convention.name
    assert [o["name"] for o in meta["outputs"]] == ["probs", "labels"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_matches_eager(tmp_path: Path, tiny: torch.nn.Module) -> None:
    out = tmp_path / "tiny.pt"
    export_model(tiny, {"model_name": tiny.name, "classes": CLASSES}, out, fmt="torchscript")
    module = torch.jit.load(str(out))
    for seed, (b, h, w) in enumerate(SIZES):
        images = random_images(b, h, w, torch.float32, seed)
        with torch.no_grad():
            probs = module(images).numpy()
        assert np.abs(probs - eager_probs(tiny, images)).max() <= 1e-4


def test_vgg_onnx_small(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vgg = build_model("vgg16_largefov", 4).eval()
    out = tmp_path / "vgg.onnx"
    export_model(vgg, {"classes": list("abcd")}, out, example_size=33, check=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = random_images(1, 30, 45, torch.float32, 0)
    probs = session.run(None, {"images": images.numpy()})[0]
    assert np.abs(probs - eager_probs(vgg, images)).max() <= 1e-4


def test_cli_export(tmp_path: Path, tiny: torch.nn.Module) -> None:
    ckpt = tmp_path / "ckpt.pt"
    torch.save({
        "format": CHECKPOINT_FORMAT, "model": tiny.state_dict(), "model_name": tiny.name,
        "num_classes": tiny.num_classes, "classes": CLASSES,
        "input_convention": tiny.input_convention.as_dict(), "iteration": 3,
    }, ckpt)  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.ts")])
    assert result.exit_code == 0, result.output
    assert "max |diff|" in result.output and (tmp_path / "m.ts.json").is_file()
    missing = runner.invoke(app, ["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.onnx")])
    assert missing.exit_code == 2 and "nope.pt" in missing.output
    before = ckpt.read_bytes()
    onto_itself = runner.invoke(app, ["export", str(ckpt), "--format", "torchscript", "--out", str(ckpt)])
    assert onto_itself.exit_code == 2 and "checkpoint being exported" in onto_itself.output
    assert ckpt.read_bytes() == before


def test_failed_check_leaves_nothing(tmp_path: Path, tiny: torch.nn.Module, monkeypatch) -> None:
    import pipseg.export as export

    def broken(path, fmt, images):
        return np.zeros((images.shape[0], tiny.num_classes, *images.shape[2:]), np.float32)

    monkeypatch.setattr(export, "run_exported", broken)
    out = tmp_path / "m.ts"
    with pytest.raises(PipsegError, match="differs from PyTorch"):
        export.export_model(tiny, {"classes": CLASSES}, out, fmt="torchscript")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_sidecar_recipe_reproduces_predict(tmp_path: Path, tiny: torch.nn.Module) -> None:
    from pipseg.inference import predict_probs

    ckpt = tmp_path / "ckpt.pt"
    torch.save({
        "format": CHECKPOINT_FORMAT, "model": tiny.state_dict(), "model_name": tiny.name,
        "num_classes": tiny.num_classes, "classes": CLASSES, "config": {"eval": {"pad_size": 65}},
        "input_convention": tiny.input_convention.as_dict(), "iteration": 3,
    }, ckpt)  # fmt: skip
    out = tmp_path / "m.ts"
    export_model(tiny, {"classes": CLASSES}, out, fmt="torchscript", check=False, source=ckpt)
    meta = json.loads(sidecar_path(out).read_text())
    recipe = meta["recipe"]
    assert recipe["pad_size"] == 65 and "65x65" in meta["note"] and "513" not in meta["note"]

    # Follow the sidecar by hand: pad bottom/right with pad_rgb, run the file, crop.
    image = random_images(1, 40, 56, torch.float32, 7)[0]
    padded = torch.tensor(recipe["pad_rgb"]).view(3, 1, 1).expand(3, 65, 65).clone()
    padded[:, :40, :56] = image
    module = torch.jit.load(str(out))
    with torch.no_grad():
        probs = module(padded[None])[0, :, :40, :56]
    expected = predict_probs(tiny, image.to(torch.uint8), pad_size=65)
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)
    at_513 = predict_probs(tiny, image.to(torch.uint8), pad_size=513)
    assert (at_513 - expected).abs().max() > 1e-3, "the recipe's pad size must matter for this image"

    plain = export_model(tiny, {"classes": CLASSES}, tmp_path / "p.ts", fmt="torchscript", check=False)
    assert plain["recipe"]["pad_size"] == 513  # no checkpoint: the paper's recipe
