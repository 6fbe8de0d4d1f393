"""`pipseg train` on the synthetic dataset with tiny_deeplab: outputs, exact resume, run-folder
safety, errors, the poly schedule and gradient accumulation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import Config, validate_config
from pipseg.data.labels import write_label
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.engine import poly_lr, train
from pipseg.errors import PipsegError
from pipseg.models import build_model, model_from_checkpoint

runner = CliRunner()


def make_cfg(root: Path, out_dir: Path, **sections: dict) -> Config:
    """A tiny run: tiny_deeplab from scratch, crops of 64, batch 4, 4 iterations."""
    raw = {
        "data": {"root": str(root), "classes": list(SYNTHETIC_CLASSES), "crop_size": 64,
                 "label_source": "box", "train_split": "train", "workers": 0},
        "model": {"name": "tiny_deeplab", "init": "none"},
        "optim": {"iters": 4, "batch_size": 4, "lr": 0.01},
        "runtime": {"device": "cpu", "out_dir": str(out_dir), "log_every": 1, "val_every": 2,
                    "ckpt_every": 2, "val_max_images": 2},
        "eval": {"pad_size": 97},
    }  # fmt: skip
    for name, values in sections.items():
        raw[name].update(values)
    return validate_config(raw)


def write_cfg(cfg: Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_cli_run_writes_outputs_and_refuses_to_overwrite(prepared_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = write_cfg(make_cfg(prepared_root, out), tmp_path / "cfg.yaml")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    assert "effective batch 4" in result.output and "summary" in result.output

    for name in ("last.pt", "best.pt", "log.jsonl", "curves.png", "summary.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["iteration"] for r in records if r["kind"] == "val"] == [2, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iteration"] == 4 and summary["finished"] and summary["label_source"] == "box"
    assert summary["train_images"] == 24 and summary["init"]["kind"] == "none"

    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == "pipseg-checkpoint-v1" and ckpt["iteration"] == 4
    assert ckpt["classes"] == list(SYNTHETIC_CLASSES) and ckpt["model_name"] == "tiny_deeplab"
    assert ckpt["config"]["optim"]["iters"] == 4 and ckpt["label_source"] == "box"
    for key in ("torch", "numpy", "python", "cuda"):
        assert key in ckpt["rng"]
    model, meta = model_from_checkpoint(out / "last.pt")
    assert meta["iteration"] == 4 and meta["classes"] == list(SYNTHETIC_CLASSES)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert best["best_miou"] == max(r["miou"] for r in records if r["kind"] == "val")

    again = runner.invoke(app, ["train", str(config)])
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, ["train", str(config), "--resume"]).exit_code == 2  # already finished
    forced = runner.invoke(app, ["train", str(config), "--force", "--set", "optim.iters=1"])
    assert forced.exit_code == 0, forced.output
    assert not (out / "best.pt").exists() or torch.load(out / "best.pt", weights_only=True)["iteration"] == 1


def test_resume_is_exact(prepared_root: Path, tmp_path: Path) -> None:
    """2 + 2 iterations with a stop in between == 4 straight (PIP loss, dropout, momentum, val at
    the stop). The straight run loads with a worker process: augmentation is seeded per sample,
    so it does not depend on where samples are loaded."""
    cfg = make_cfg(prepared_root, tmp_path / "a")
    first = train(cfg, stop_at=2)
    assert first.iteration == 2 and not first.finished
    with pytest.raises(PipsegError, match="partial run.*--resume"):
        train(cfg)
    resumed = train(cfg, resume=True)
    assert resumed.iteration == 4 and resumed.finished

    straight = train(make_cfg(prepared_root, tmp_path / "b", data={"workers": 1}))
    a, b = weights(resumed.last_checkpoint), weights(straight.last_checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]


def test_missing_imagenet_weights_names_download(prepared_root: Path, tmp_path: Path) -> None:
    cfg = make_cfg(prepared_root, tmp_path / "run", model={"name": "vgg16_largefov", "init": "imagenet",
                                                           "weights_dir": str(tmp_path / "w")})  # fmt: skip
    result = runner.invoke(app, ["train", str(write_cfg(cfg, tmp_path / "cfg.yaml"))])
    assert result.exit_code == 2
    assert "vgg16-397923af.pth" in result.output and "pipseg download vgg16" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error(prepared_root: Path, tmp_path: Path) -> None:
    cfg = make_cfg(prepared_root, tmp_path / "run", runtime={"device": "cuda"})
    result = runner.invoke(app, ["train", str(write_cfg(cfg, tmp_path / "cfg.yaml"))])
    assert result.exit_code == 2 and "runtime.device cuda: CUDA is not available" in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_poly_lr_and_classifier_multiplier(prepared_root: Path, tmp_path: Path) -> None:
    assert poly_lr(1e-3, 0, 20000, 0.9) == 1e-3
    assert poly_lr(1e-3, 10000, 20000, 0.9) == pytest.approx(1e-3 * 0.5**0.9, rel=1e-12)
    assert poly_lr(1e-3, 20000, 20000, 0.9) == 0.0
    cfg = make_cfg(prepared_root, tmp_path / "run", optim={"iters": 3, "lr": 0.02, "poly_power": 0.9,
                                                           "classifier_lr_mult": 10.0})  # fmt: skip
    result = train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs == pytest.approx([0.02 * (1 - i / 3) ** 0.9 for i in range(3)], rel=1e-12)
    groups = torch.load(result.last_checkpoint, weights_only=True)["optimizer"]["param_groups"]
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"], rel=1e-12)
    assert groups[0]["momentum"] == 0.9 and groups[0]["weight_decay"] == 5e-4


def _frozen(module: nn.Module) -> nn.Module:
    """BatchNorm -> FrozenBatchNorm2d (same statistics), Dropout -> Identity."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        elif isinstance(child, nn.Dropout | nn.Dropout2d):
            setattr(module, name, nn.Identity())
        else:
            _frozen(child)
    return module


class PixelMeanCE(nn.Module):
    """Per-pixel CE averaged over all B*H*W pixels (ignored ones count as 0): a mean over samples,
    so micro-batch means average to the batch mean exactly."""

    def forward_parts(self, logits, labels, boxes):
        ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none").mean()
        return {"loss": ce, "box": torch.zeros_like(ce), "pixel": ce}


def test_gradient_accumulation_equals_one_big_batch(prepared_root, tmp_path) -> None:
    """Batch 4 in one pass == batch 4 as 2 micro-batches of 2, after one SGD step.

    Only for a criterion that is a mean over samples and a model without batch coupling: PIP's
    L_box divides by the batch's total box perimeter and its pixel weights use the batch maximum,
    CE averages over the batch's valid pixels, and BatchNorm normalises over the micro-batch;
    each of those changes with the split by design. So this test freezes BN, drops dropout and
    uses a per-sample-mean CE, isolating what the engine owns: the micro-batch split, the loss
    scaling by 1/accumulate and the single optimizer step.
    """
    runs = {}
    for acc in (1, 2):
        cfg = make_cfg(prepared_root, tmp_path / f"acc{acc}", optim={"iters": 1, "accumulate": acc, "lr": 0.1},
                       runtime={"val_every": 100})  # fmt: skip
        torch.manual_seed(0)
        model = _frozen(build_model("tiny_deeplab", len(SYNTHETIC_CLASSES)))
        runs[acc] = weights(train(cfg, model=model, loss=PixelMeanCE()).last_checkpoint)
    torch.manual_seed(0)
    init = _frozen(build_model("tiny_deeplab", len(SYNTHETIC_CLASSES))).state_dict()
    assert not torch.equal(init["classifier.weight"], runs[1]["classifier.weight"])  # it trained
    for k in runs[1]:
        torch.testing.assert_close(runs[2][k], runs[1][k], rtol=1e-5, atol=1e-6, msg=k)


def test_data_problems_are_one_line_errors(prepared_root: Path, tmp_path: Path) -> None:
    """An empty split, and a label map whose size differs from its image (raised inside a
    DataLoader worker, which wraps it in a traceback: the CLI still shows one line)."""
    root = tmp_path / "VOC"
    shutil.copytree(prepared_root, root)
    split_file = root / "pipseg" / "splits" / "train.txt"
    ids = split_file.read_text()
    config = write_cfg(make_cfg(root, tmp_path / "run", data={"workers": 1}), tmp_path / "cfg.yaml")

    split_file.write_text("")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2 and "has no images" in result.output

    split_file.write_text(ids)
    for label in (root / "pipseg" / "pseudo" / "box").glob("*.png"):
        write_label(label, np.zeros((5, 7), np.uint8))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert "labels must match their images" in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "syn_" in errors[0] and errors[0].endswith("labels must match their images")


def test_fp16_autocast_channels_last_on_cpu(prepared_root: Path, tmp_path: Path) -> None:
    """The AMP path (autocast + GradScaler) and channels_last run on the CPU too; the scaler's
    state is saved (plain types) for resume."""
    cfg = make_cfg(prepared_root, tmp_path / "run", optim={"iters": 1},
                   runtime={"amp": "fp16", "channels_last": True})  # fmt: skip
    result = train(cfg)
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0 and ckpt["config"]["runtime"]["amp"] == "fp16"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_force_ignores_an_unreadable_last_checkpoint(tmp_path: Path) -> None:
    """--force must be able to clear a run whose last.pt is not a training checkpoint."""
    from pipseg.engine.run_folder import resume_source

    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    assert resume_source(tmp_path, None, force=True) is None
    with pytest.raises(PipsegError):
        resume_source(tmp_path, None, force=False)


def test_a_given_model_must_match_the_config(prepared_root: Path, tmp_path: Path) -> None:
    """The checkpoint names cfg.model.name, so a caller's model of another kind is refused
    before anything is written."""
    cfg = make_cfg(prepared_root, tmp_path / "run")
    with pytest.raises(PipsegError, match="model.name: .*vgg16_largefov.*tiny_deeplab"):
        train(cfg, model=build_model("vgg16_largefov", len(SYNTHETIC_CLASSES)))
    with pytest.raises(PipsegError, match="3 classes"):
        train(cfg, model=build_model("tiny_deeplab", 3))
    assert not (tmp_path / "run").exists()


def test_tensorboard_scalars_and_the_run_lock(prepared_root: Path, tmp_path: Path) -> None:
    """runtime.tensorboard writes what log.jsonl holds (read back by TensorBoard's own reader);
    a run into a folder whose lock is held by a live process is refused naming it."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipseg.engine.lock import LOCK_NAME, RunLock

    out = tmp_path / "tb"
    train(make_cfg(prepared_root, out, runtime={"tensorboard": True}))
    assert not (out / LOCK_NAME).exists()  # released at the end
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [(r["iteration"], r["loss"]) for r in log if r["kind"] == "train"]
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("train/loss")] == [(i, round(v, 5)) for i, v in losses]
    assert [e.step for e in events.Scalars("val/miou")] == [r["iteration"] for r in log if r["kind"] == "val"]
    assert f"val_iou/{SYNTHETIC_CLASSES[0]}" in events.Tags()["scalars"]

    holder = RunLock(tmp_path / "busy").acquire()  # this process holds it: flock is per open file
    try:
        with pytest.raises(PipsegError, match=r"runtime.out_dir .*another training run"):
            train(make_cfg(prepared_root, tmp_path / "busy"))
    finally:
        holder.release()


def test_classes_come_from_the_prepared_manifest(prepared_root: Path, tmp_path: Path) -> None:
    """A config without data.classes, naming only data.prepared (no data.root), trains with the
    class list `prepare` recorded, and its checkpoint carries it; a config whose list differs
    from the manifest's is one line naming data.classes and the manifest file."""
    raw = make_cfg(prepared_root, tmp_path / "run", optim={"iters": 1}, runtime={"val_every": 100}).to_dict()
    del raw["data"]["classes"], raw["data"]["root"]
    raw["data"]["prepared"] = str(prepared_root / "pipseg")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output

    manifest = json.loads((prepared_root / "pipseg" / "manifest.json").read_text())
    assert manifest["classes"] == list(SYNTHETIC_CLASSES)
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["classes"] == ckpt["config"]["data"]["classes"] == manifest["classes"]
    assert ckpt["num_classes"] == len(manifest["classes"])
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["classes"] == manifest["classes"]
    assert model_from_checkpoint(tmp_path / "run" / "last.pt")[1]["classes"] == manifest["classes"]

    raw["data"]["classes"] = list(SYNTHETIC_CLASSES[:3])
    raw["runtime"]["out_dir"] = str(tmp_path / "other")
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert len(errors) == 1 and "data.classes" in errors[0], errors
    assert str(prepared_root / "pipseg" / "manifest.json") in errors[0]
    assert not (tmp_path / "other").exists()


def test_val_split_without_masks_trains_without_validation(tmp_path: Path) -> None:
    """Box-only data: the val split has no ground-truth masks. The run trains, says so once in
    its header, writes last.pt and no best.pt, and its log holds no validation."""
    from pipseg.data.prepare import prepare_dataset
    from pipseg.data.synthetic import make_synthetic_voc

    root = make_synthetic_voc(tmp_path / "VOC", 8, 3, (96, 72), seed=1)
    for image_id in (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split():
        (root / "SegmentationClass" / f"{image_id}.png").unlink()
    prepare_dataset(root, pseudo=["box"], classes=SYNTHETIC_CLASSES, workers=1)
    raw = make_cfg(root, tmp_path / "run", optim={"iters": 2}).to_dict()
    del raw["data"]["classes"]
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))

    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert text.count("no validation") == 1, result.output
    assert "none of the 3 images of val has a ground-truth mask" in text
    out = tmp_path / "run"
    assert (out / "last.pt").is_file() and not (out / "best.pt").exists()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "val"]
    assert records[0]["validation"] is False and records[0]["val_without_masks"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["best_miou"] is None and summary["metrics"] is None


def test_training_bar_fits_80_columns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With COLUMNS=80 the bar shows everything but the loss parts, uncut, at the widest values."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from pipseg.cli.train_cmd import _Display, progress_columns
    from pipseg.engine.runlog import run_header

    monkeypatch.setenv("COLUMNS", "80")
    console = Console(file=io.StringIO(), force_terminal=True, record=True)
    assert console.width == 80
    progress = Progress(*progress_columns(), console=console, auto_refresh=False)
    header = run_header(make_cfg(tmp_path, tmp_path / "run", optim={"iters": 20000}), init={"kind": "none"},
                        train_images=10582, val_images=1449, device=torch.device("cpu"), world_size=1,
                        micro_batch=30, start_iteration=0, out_dir=tmp_path / "run")  # fmt: skip
    display = _Display(progress)
    display({"event": "start", **header})
    display({"event": "iter", "iteration": 19999})
    display({"event": "log", "iteration": 19999, "loss": 12.3456, "box": 10.5, "pixel": 1.25,
             "lr": 1.234e-3, "images_per_s": 1234.56, "eta_s": 999999.0})  # fmt: skip
    console.print(progress.get_renderable())
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    bar = lines[-1]
    assert bar.startswith("19999/20000 ") and bar.rstrip().endswith("loss 12.346 · lr 1.2e-03 · 1234.6 img/s · ETA 277:46:39"), bar

    monkeypatch.setenv("COLUMNS", "120")  # wide terminals show the loss parts too
    wide = Console(file=io.StringIO(), force_terminal=True, record=True)
    progress = Progress(*progress_columns(), console=wide, auto_refresh=False)
    display = _Display(progress)
    display({"event": "start", **header})
    display({"event": "log", "iteration": 1, "loss": 1.0, "box": 0.5, "pixel": 0.75, "lr": 1e-3,
             "images_per_s": 1.0, "eta_s": 1.0})  # fmt: skip
    wide.print(progress.get_renderable())
    assert "loss 1.000 (box 0.500, pix 0.750)" in wide.export_text()
