"""Export a trained model to ONNX or TorchScript, with its input convention baked in.

The exported graph takes RGB images ``[B, 3, H, W]`` with values 0..255 (dynamic B, H, W; uint8
or float32, fixed at export) and returns ``probs``: softmax class probabilities
``[B, C, H, W]`` float32 at the input resolution (logits upsampled bilinearly with
``align_corners=True``), plus ``labels`` ``[B, H, W]`` int64 (argmax) when asked.

It runs the image as given: no padding. The model's test recipe (`pipseg.inference`, what
`pipseg predict` and `pipseg eval` run) first pads bottom/right to ``pad_size`` (the checkpoint's
``eval.pad_size``; a longer side to the next ``8k + 1``) with the mean colour and crops after,
so an unpadded image can come out differently, most near the borders; pad it yourself as the
sidecar's ``recipe`` says to reproduce `pipseg predict` exactly.

Next to the model a JSON sidecar (``<file>.json``) records classes, convention, the test recipe
and the I/O spec.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipseg.errors import PipsegError
from pipseg.inference import DEFAULT_PAD_SIZE, checkpoint_pad_size
from pipseg.io import atomic_path, atomic_write_json
from pipseg.models.convention import InputConvention, mean_rgb255, prepare_images

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMAT_VERSION = "pipseg-export-v1"
CHECK_TOLERANCE = 1e-4  # max abs difference of probabilities, exported vs eager


class SegmentationExport(nn.Module):
    """Images 0..255 RGB ``[B, 3, H, W]`` -> probabilities ``[B, C, H, W]`` (and argmax labels)."""

    def __init__(self, model: nn.Module, convention: InputConvention, with_labels: bool = False) -> None:
        super().__init__()
        self.model = model
        self.convention = convention
        self.with_labels = with_labels

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(prepare_images(images, self.convention))
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=True)
        probs = logits.softmax(dim=1)
        if self.with_labels:
            return probs, probs.argmax(dim=1)
        return probs


def sidecar(
    model: nn.Module,
    meta: dict[str, Any],
    fmt: ExportFormat,
    input_dtype: str,
    with_labels: bool,
    pad_size: int = DEFAULT_PAD_SIZE,
) -> dict[str, Any]:
    """The JSON description written next to an exported model (``pad_size``: its test recipe's)."""
    convention: InputConvention = model.input_convention
    pad_rgb = [float(v) for v in mean_rgb255(convention)]
    outputs = [{"name": "probs", "shape": ["batch", len(meta["classes"]), "height", "width"], "dtype": "float32",
                "meaning": "softmax class probabilities at the input resolution"}]  # fmt: skip
    if with_labels:
        outputs.append({"name": "labels", "shape": ["batch", "height", "width"], "dtype": "int64",
                        "meaning": "argmax class index"})  # fmt: skip
    return {
        "format": EXPORT_FORMAT_VERSION,
        "file_format": fmt,
        "model_name": meta.get("model_name", getattr(model, "name", None)),
        "classes": list(meta["classes"]),
        "input_convention": convention.as_dict(),
        "input": {"name": "images", "shape": ["batch", 3, "height", "width"], "dtype": input_dtype,
                  "range": "0..255", "channels": "RGB"},  # fmt: skip
        "outputs": outputs,
        "pad_rgb": pad_rgb,
        "recipe": recipe(pad_size, pad_rgb),
        "note": (f"no padding inside the graph; pipseg predict and eval pad each image bottom/right to "
                 f"{pad_size}x{pad_size} with pad_rgb (a longer side to the next 8k+1), run, and crop the "
                 f"probabilities back: do the same to get their exact output"),
    }  # fmt: skip


def recipe(pad_size: int, pad_rgb: list[float]) -> dict[str, Any]:
    """The test recipe of `pipseg.inference` as data, for the sidecar."""
    return {
        "pad_size": pad_size,
        "pad": "bottom/right, with pad_rgb, to pad_size x pad_size; a side longer than pad_size to the "
               "smallest 8k+1 at least as long",
        "pad_rgb": pad_rgb,
        "crop": "the probabilities back to the image size (top-left)",
        "source": "the checkpoint's eval.pad_size (513 where it records none)",
    }  # fmt: skip


def _example(input_dtype: str, height: int, width: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8)
    return x if input_dtype == "uint8" else x.float()


def _check_sizes(size: int) -> list[tuple[int, int, int]]:
    return [(1, size, size), (2, size * 3 // 4 + 3, size + 5)]


def export_model(
    model: nn.Module,
    meta: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    fmt: ExportFormat = "onnx",
    input_dtype: Literal["uint8", "float32"] = "float32",
    with_labels: bool = False,
    example_size: int = 97,
    check: bool = True,
    source: str | os.PathLike[str] | None = None,
    pad_size: int | None = None,
) -> dict[str, Any]:
    """Export ``model`` (CPU, eval mode) to ``out`` atomically and write ``<out>.json``.

    The sidecar states the test recipe's ``pad_size``: ``pad_size`` if given, else the ``source``
    checkpoint's ``eval.pad_size`` (513 without one). With ``check`` the exported file is run
    (onnxruntime / torch.jit.load) on random images of two sizes and batch sizes and compared with
    the eager wrapper; a difference above 1e-4 raises `PipsegError`. Returns the sidecar dict plus
    ``max_abs_diff`` (None without ``check``).
    """
    if fmt not in ("onnx", "torchscript"):
        raise PipsegError(f"--format {fmt}: unknown; use onnx or torchscript")
    if input_dtype not in ("uint8", "float32"):
        raise PipsegError(f"--input-dtype {input_dtype}: unknown; use uint8 or float32")
    out = Path(out)
    if source is not None and out.resolve() == Path(source).resolve():
        raise PipsegError(f"{out}: --out is the checkpoint being exported; choose another file")
    if pad_size is None:
        pad_size = checkpoint_pad_size(source) if source is not None else DEFAULT_PAD_SIZE
    model = model.to("cpu").eval()
    wrapper = SegmentationExport(model, model.input_convention, with_labels).eval()
    example = _example(input_dtype, example_size, example_size + 16)
    # Export and check the temp file; only a file that passed the check is renamed into place.
    with torch.no_grad(), atomic_path(out) as tmp:
        if fmt == "onnx":
            _export_onnx(wrapper, example, tmp, with_labels)
        else:
            _export_torchscript(wrapper, example, tmp)
        try:
            max_diff = check_export(wrapper, tmp, fmt, input_dtype, example_size) if check else None
        except PipsegError as e:
            raise PipsegError(str(e).replace(str(tmp), str(out))) from None
    info = sidecar(model, meta, fmt, input_dtype, with_labels, pad_size)
    atomic_write_json(sidecar_path(out), info)
    info["max_abs_diff"] = max_diff
    return info


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, out: Path, with_labels: bool) -> None:
    dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=8, max=8192),
            3: torch.export.Dim("width", min=8, max=8192)}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about its own internals
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, dynamic_shapes={"images": dims},
            input_names=["images"], output_names=["probs", "labels"] if with_labels else ["probs"],
            external_data=False, verbose=False,
        )  # fmt: skip
    program.save(out, external_data=False)


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    traced.save(str(out))


def run_exported(path: str | os.PathLike[str], fmt: ExportFormat, images: torch.Tensor) -> np.ndarray:
    """Probabilities from an exported file (onnxruntime on CPU, or torch.jit.load)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        result = module(images)
    return (result[0] if isinstance(result, tuple) else result).numpy()


def check_export(wrapper: nn.Module, out: Path, fmt: ExportFormat, input_dtype: str, size: int) -> float:
    """Max abs difference of probabilities, exported vs eager, over two input shapes."""
    worst = 0.0
    for seed, (batch, height, width) in enumerate(_check_sizes(size), start=1):
        images = _example(input_dtype, height, width, batch, seed)
        with torch.no_grad():
            expected = wrapper(images)
        expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
        got = run_exported(out, fmt, images)
        if got.shape != expected.shape:
            raise PipsegError(f"{out}: exported model gave shape {got.shape} for input {tuple(images.shape)}, expected {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > CHECK_TOLERANCE:
        raise PipsegError(f"{out}: exported model differs from PyTorch by {worst:.2e} (> {CHECK_TOLERANCE}); please report this")
    return worst
