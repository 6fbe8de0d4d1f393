"""GPU check: does pipseg train, stay free of host syncs and score correctly on a CUDA machine?

    python benchmarks/gpu_check.py [--device cuda|cpu] [--tiny] [--out DIR] [--json PATH]
        [--iters N] [--budget-s S]                                            (`make gpu-check`)

On a CUDA machine, in about five minutes (at most ``--budget-s`` for the commands it starts):

1. loss: `PIPLoss` on the GPU equals the float64 CPU result (value and gradient, both
   ``box_search`` modes against both CPU searches; float32 value too);
2. step: the training step built from the library's pieces (``build_model``, ``prepare_images``,
   autocast bf16, channels_last, ``to_logit_grid``, ``PIPLoss``, SGD) makes no host-device
   synchronisation after warm-up (``torch.cuda.set_sync_debug_mode("error")``; a planted
   ``.item()`` must trip it), and CUDA events time its forward / loss / backward phases, giving
   the loss's share of the step, images/s without data loading, and peak memory;
3. process group: an all-reduce through a one-process group (nccl on CUDA, gloo on the CPU);
   under torchrun with one process the engine itself starts no group;
4. train: ``torchrun --nproc_per_node 1 -m pipseg train`` of ``vgg16_largefov`` from scratch
   (``model.init=none``) on generated data (`make_synthetic_voc` + ``pipseg prepare --pseudo
   box``) at crop 321, batch 30, bf16, channels_last; images/s come from its summary and log;
5. ``pipseg predict --crf``, ``pipseg eval`` and ``pipseg export`` (ONNX, checked with
   onnxruntime on the CPU: export has no device option) on the run's ``last.pt``;
6. optional: ``segment_anything``'s ``vit_b`` with random weights, time per image, when the
   package imports.

Prints the time of each stage as it ends, then one table: the figures, the device name and
PASS / FAIL / SKIP per check with what failed; writes the same as JSON (``--json``, default
``<out>/gpu_check.json``). Exits 1 when a check failed, 0 otherwise. With ``--device cuda``
(the default) on a machine without CUDA it says so and exits 0. ``--device cpu --tiny`` runs the
same code end to end on the CPU at toy size (tiny_deeplab, crop 65, batch 2, gloo), skipping only
what needs CUDA (the sync check and SAM), so the script is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import Tensor

import pipseg
from pipseg.data.lists import read_id_list
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from pipseg.io import atomic_write_json
from pipseg.losses import PIPLoss, to_logit_grid
from pipseg.models import build_model, prepare_images

BOX_SEARCHES = ("auto", "dense")
MAX_BOXES = 4  # boxes per image in the generated batches (VOC averages under three)


@dataclass(frozen=True)
class Profile:
    """The sizes of one check run."""

    model: str
    crop: int
    batch: int
    iters: int
    log_every: int
    n_train: int
    n_val: int
    image_size: tuple[int, int]  # (width, height) of the generated images
    pad_size: int
    workers: int  # data.workers of the training run
    warmup_steps: int
    checked_steps: int
    timed_steps: int


def full_profile() -> Profile:
    """The GPU run: the paper's model, crop and batch; a few hundred iterations."""
    workers = max(1, min(12, (os.cpu_count() or 4) - 2))
    return Profile("vgg16_largefov", 321, 30, 300, 20, 150, 8, (420, 340), 513, workers, 3, 3, 10)


TINY = Profile("tiny_deeplab", 65, 2, 4, 2, 4, 2, (80, 64), 96, 1, 1, 2, 3)


@dataclass
class Check:
    """One PASS / FAIL / SKIP line of the report."""

    name: str
    status: str
    detail: str = ""


@dataclass
class Report:
    """Everything the table and the JSON file show."""

    device: str
    device_name: str
    profile: Profile
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    stages_s: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add(self, name: str, problems: list[str], skip: str | None = None) -> None:
        """Record a check: SKIP with a reason, else PASS when ``problems`` is empty."""
        if skip is not None:
            self.checks.append(Check(name, "SKIP", skip))
        else:
            self.checks.append(Check(name, "FAIL" if problems else "PASS", "; ".join(problems)))

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.checks)


# --------------------------------------------------------------------------------------------
# Generated batches (step and loss checks)


def random_batch(batch: int, crop: int, num_classes: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Random RGB crops with 1..MAX_BOXES boxes each (cls -1 pads), labels filled from the boxes.

    The last box of each image is left out of its label map, so some box classes are absent
    from the labels, as happens with real crops.
    """
    images = torch.randint(0, 256, (batch, 3, crop, crop), generator=gen, dtype=torch.uint8)
    labels = torch.zeros(batch, crop, crop, dtype=torch.uint8)
    boxes = torch.full((batch, MAX_BOXES, 5), -1, dtype=torch.long)
    for b in range(batch):
        count = int(torch.randint(1, MAX_BOXES + 1, (), generator=gen))
        for m in range(count):
            x0, y0 = (int(v) for v in torch.randint(0, crop - 4, (2,), generator=gen))
            x1 = x0 + int(torch.randint(2, crop - x0, (), generator=gen))
            y1 = y0 + int(torch.randint(2, crop - y0, (), generator=gen))
            cls = int(torch.randint(1, num_classes, (), generator=gen))
            boxes[b, m] = torch.tensor([x0, y0, x1, y1, cls])
            if m < count - 1 or count == 1:
                labels[b, y0 : y1 + 1, x0 : x1 + 1] = cls
        labels[b, :, crop // 2] = 255  # an ignore band, like VOC's object outlines
    return {"image": images, "label": labels, "boxes": boxes}


# --------------------------------------------------------------------------------------------
# Loss: the device against the float64 CPU result


def loss_and_grad(logits: Tensor, labels: Tensor, boxes: Tensor, mode: str) -> tuple[float, Tensor]:
    """PIPLoss value and d loss / d logits, both returned on the CPU in float64."""
    x = logits.detach().clone().requires_grad_(True)
    loss = PIPLoss(box_search=mode).to(x.device)(x, labels, boxes)
    loss.backward()
    assert x.grad is not None
    return float(loss.detach()), x.grad.detach().to("cpu", torch.float64)


def compare(name: str, ref: tuple[float, Tensor], cand: tuple[float, Tensor], rtol: float, grad: bool) -> list[str]:
    """What differs between a candidate (value, grad) and the reference beyond ``rtol``."""
    problems = []
    if not math.isfinite(cand[0]) or abs(cand[0] - ref[0]) > rtol * max(abs(ref[0]), 1e-12):
        problems.append(f"{name}: loss {cand[0]!r} != {ref[0]!r}")
    if grad:
        scale = float(ref[1].abs().max())
        err = float((cand[1] - ref[1]).abs().max())
        if not torch.isfinite(cand[1]).all() or err > rtol * max(scale, 1e-12):
            problems.append(f"{name}: gradient off by {err:.3g} (max-norm {scale:.3g})")
    return problems


def check_loss(device: torch.device, report: Report) -> None:
    """Every box search on ``device`` (float64: value + gradient; float32: value) against both
    CPU searches in float64."""
    gen = torch.Generator().manual_seed(0)
    num_classes, crop = len(SYNTHETIC_CLASSES), 161
    batch = random_batch(3, crop, num_classes, gen)
    grid = (crop + 7) // 8
    labels, boxes = to_logit_grid(batch["label"].long(), batch["boxes"], (grid, grid))
    logits = 3.0 * torch.randn(3, num_classes, grid, grid, generator=gen, dtype=torch.float64)
    refs = {m: loss_and_grad(logits, labels, boxes, m) for m in BOX_SEARCHES}
    on_device = (labels.to(device), boxes.to(device))
    problems = []
    for mode in BOX_SEARCHES:
        cand64 = loss_and_grad(logits.to(device), *on_device, mode)
        cand32 = loss_and_grad(logits.float().to(device), *on_device, mode)
        for ref_mode, ref in refs.items():
            vs = f"{device.type} {mode} vs cpu {ref_mode}"
            problems += compare(f"float64 {vs}", ref, cand64, rtol=1e-9, grad=True)
            # float32 value only: an arg-max of a line can flip between near-equal pixels.
            problems += compare(f"float32 {vs}", ref, cand32, rtol=1e-5, grad=False)
    report.figures["loss_check_value"] = refs["dense"][0]
    report.add("loss on device = float64 CPU", problems)


# --------------------------------------------------------------------------------------------
# The training step: no host syncs, phase timings


class StepTimer:
    """Named marks within a step: CUDA events on a GPU (recording one is no sync), else the clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def durations_ms(self) -> dict[str, float]:
        """Milliseconds from each mark to the next, keyed by the later mark (GPU: synchronise first)."""
        out = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:], strict=False):
            out[name] = a.elapsed_time(b) if self.cuda else 1000 * (b - a)
        return out


@dataclass
class StepParts:
    """What one training step is made of (the engine's step, rebuilt from public pieces)."""

    model: torch.nn.Module
    criterion: PIPLoss
    optimizer: torch.optim.Optimizer
    device: torch.device


def build_step(profile: Profile, device: torch.device) -> StepParts:
    model = build_model(profile.model, len(SYNTHETIC_CLASSES))
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    return StepParts(model, PIPLoss().to(device), optimizer, device)


def train_step(parts: StepParts, batch: dict[str, Tensor], timer: StepTimer) -> None:
    """One step as the engine runs it; ``timer`` marks forward, loss, loss backward, backward, step."""
    device = parts.device
    timer.mark("start")
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True).long()
    boxes = batch["boxes"].to(device, non_blocking=True)
    x = prepare_images(images, parts.model.input_convention).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = parts.model(x)
    timer.mark("forward")
    labels, boxes = to_logit_grid(labels, boxes, logits.shape[-2:])
    logits = logits.float()
    logits.register_hook(lambda grad: timer.mark("loss_backward"))  # d loss / d logits is done
    loss = parts.criterion(logits, labels, boxes)
    timer.mark("loss")
    loss.backward()
    timer.mark("backward")
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    timer.mark("step")


def raised_at(exc: BaseException) -> str:
    """The innermost frame of pipseg or of this script in ``exc``'s traceback, as file:line."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "pipseg" in f.filename or f.filename == __file__] or frames
    if not ours:
        return "?"
    f = ours[-1]
    return f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} in {f.name} ({f.line})"


def sync_location(exc: BaseException) -> str:
    """Where a sync was raised and torch's first line about it."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{raised_at(exc)}: {message}"


@contextmanager
def sync_errors(enabled: bool) -> Iterator[None]:
    """``set_sync_debug_mode("error")`` for the block (GPU only), restored afterwards."""
    if enabled:
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if enabled:
            torch.cuda.set_sync_debug_mode("default")


def detector_works(device: torch.device) -> bool:
    """A planted ``.item()`` must raise under the debug mode, or a PASS would mean nothing."""
    probe = torch.ones((), device=device)
    try:
        with sync_errors(True):
            probe.item()
    except RuntimeError:
        return True
    return False


def check_step(profile: Profile, device: torch.device, report: Report) -> None:
    """Warm up, run checked steps under the sync debug mode (GPU), then time steps by phase."""
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(1)
    batches = [random_batch(profile.batch, profile.crop, len(SYNTHETIC_CLASSES), gen) for _ in range(2)]
    if cuda:
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
    parts = build_step(profile, device)
    for i in range(profile.warmup_steps):
        train_step(parts, batches[i % 2], StepTimer(device))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    problems: list[str] = []
    with sync_errors(cuda):
        for i in range(profile.checked_steps):
            try:
                train_step(parts, batches[i % 2], StepTimer(device))
            except RuntimeError as e:
                problems.append(sync_location(e))
                parts.optimizer.zero_grad(set_to_none=True)
                break
    if cuda and not detector_works(device):
        problems.append("set_sync_debug_mode('error') did not catch a planted .item()")
    report.add("no host sync in the training step", problems,
               skip=None if cuda else "not applicable on the CPU (steps ran without the check)")  # fmt: skip
    time_steps(parts, batches, profile, report)
    del parts
    if cuda:
        torch.cuda.empty_cache()


def time_steps(parts: StepParts, batches: list[dict[str, Tensor]], profile: Profile, report: Report) -> None:
    """Per-phase medians over ``timed_steps``; the loss's share is its forward plus backward."""
    device = parts.device
    timers = []
    for i in range(profile.timed_steps):
        timers.append(StepTimer(device))
        train_step(parts, batches[i % 2], timers[-1])
    if device.type == "cuda":
        torch.cuda.synchronize()
        report.figures["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    steps = [t.durations_ms() for t in timers]
    step_ms = [sum(s.values()) for s in steps]
    shares = [(s["loss"] + s["loss_backward"]) / total for s, total in zip(steps, step_ms, strict=True)]
    report.figures["step_ms"] = median(step_ms)
    report.figures["step_phases_ms"] = {k: median(s[k] for s in steps) for k in steps[0]}
    report.figures["loss_share"] = median(shares)
    report.figures["step_images_per_s"] = profile.batch * len(steps) / (sum(step_ms) / 1000)


# --------------------------------------------------------------------------------------------
# A one-process group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_process_group(device: torch.device, report: Report) -> None:
    """all_reduce in a one-process group with the backend the engine picks for the device."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    problems = []
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        value = torch.arange(4.0, device=device)
        dist.all_reduce(value)
        if not torch.equal(value.cpu(), torch.arange(4.0)):
            problems.append(f"all_reduce over one process changed the tensor to {value.tolist()}")
    finally:
        dist.destroy_process_group()
    report.add(f"process group ({backend})", problems)


# --------------------------------------------------------------------------------------------
# The commands, as subprocesses


@dataclass
class Budget:
    """Wall-clock seconds left for the commands this script starts."""

    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


def child_env() -> dict[str, str]:
    """This environment, outside any torchrun job, with the pipseg this script imported first."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    src = str(Path(pipseg.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}


def run_command(name: str, cmd: list[str], logs: Path, budget: Budget) -> list[str]:
    """Run ``cmd`` with its output in ``logs/<name>.log``; problems (exit code, timeout, last line)."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    timeout = budget.left()
    if timeout < 5:
        return [f"{name}: not started, the time budget is spent"]
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
            proc.wait()
            return [f"{name}: timed out after {timeout:.0f} s (log {log})"]
    if rc != 0:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        return [f"{name}: exit code {rc}: {lines[-1].strip() if lines else ''} (log {log})"]
    return []


def pipseg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipseg", *args]


def make_data(profile: Profile, out: Path, budget: Budget, report: Report) -> Path:
    """Generated VOC-layout data, prepared with box pseudo labels by ``pipseg prepare``."""
    root = out / "voc"
    make_synthetic_voc(root, profile.n_train, profile.n_val, profile.image_size, seed=0)
    classes = out / "classes.txt"
    classes.write_text("\n".join(SYNTHETIC_CLASSES) + "\n", encoding="utf-8")
    workers = str(max(1, min(8, os.cpu_count() or 1)))
    problems = run_command("prepare", pipseg_cmd(
        "prepare", "--voc-root", str(root), "--pseudo", "box", "--classes", str(classes),
        "--workers", workers, "--no-discover"), out / "logs", budget)  # fmt: skip
    report.add("pipseg prepare", problems)
    return root


def write_config(profile: Profile, device: torch.device, root: Path, out: Path, iters: int) -> Path:
    raw = {
        "data": {"root": str(root), "classes": list(SYNTHETIC_CLASSES), "train_split": "train",
                 "val_split": "val", "label_source": "box", "crop_size": profile.crop,
                 "workers": profile.workers},
        "model": {"name": profile.model, "init": "none"},
        "loss": {"kind": "pip"},
        "optim": {"iters": iters, "batch_size": profile.batch},
        "runtime": {"device": device.type, "out_dir": str(out / "train"), "amp": "bf16",
                    "channels_last": True, "log_every": profile.log_every,
                    "val_every": iters, "ckpt_every": iters},
        "eval": {"pad_size": profile.pad_size},
    }  # fmt: skip
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def train_run(config: Path, device: torch.device, out: Path, budget: Budget, report: Report) -> Path | None:
    """``torchrun --nproc_per_node 1 -m pipseg train``; images/s from its summary and log."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]  # fmt: skip
    problems = run_command("train", [*torchrun, "-m", "pipseg", "train", str(config), "--force"], out / "logs", budget)
    run_dir = out / "train"
    if problems:
        report.add("torchrun pipseg train", problems)
        return None
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    records = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines() if ln]
    start = next(r for r in records if r.get("kind") == "start")
    rates = [r["images_per_s"] for r in records if r.get("kind") == "train"]
    final = summary.get("final_loss", {}).get("loss", float("nan"))
    if not summary.get("finished"):
        problems.append(f"stopped at iteration {summary.get('iteration')}")
    if not math.isfinite(final):
        problems.append(f"final loss {final}")
    if not str(start.get("device", "")).startswith(device.type) or start.get("amp") != "bf16":
        problems.append(f"ran on {start.get('device')} with amp {start.get('amp')}")
    report.figures.update({
        "train_images_per_s": summary.get("images_per_s"),
        "train_images_per_s_median": median(rates[1:] or rates) if rates else None,
        "train_final_loss": final, "train_val_miou": (summary.get("metrics") or {}).get("miou"),
        "train_world_size": start.get("world_size"), "train_wall_s": summary.get("wall_time_s"),
    })  # fmt: skip
    report.add("torchrun pipseg train", problems)
    last = run_dir / "last.pt"
    return last if last.is_file() and not problems else None


def predict_run(ckpt: Path, root: Path, profile: Profile, device: torch.device, out: Path,
                budget: Budget, report: Report) -> None:  # fmt: skip
    """``pipseg predict --crf`` on the val images: one label map per image, of its size."""
    ids = read_id_list(root / "ImageSets" / "Segmentation" / "val.txt")
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    pred_dir = out / "predict"
    problems = run_command("predict", pipseg_cmd(
        "predict", *map(str, images), "--checkpoint", str(ckpt), "--out", str(pred_dir), "--crf",
        "--overwrite", "--pad-size", str(profile.pad_size), "--device", device.type),
        out / "logs", budget)  # fmt: skip
    for image_id, image in zip(ids, images, strict=True):
        if problems:
            break
        png = pred_dir / f"{image_id}.png"
        if not png.is_file():
            problems.append(f"no prediction {png}")
            continue
        pred = np.asarray(Image.open(png))
        with Image.open(image) as im:
            size = im.size
        if pred.shape != (size[1], size[0]) or pred.max() >= len(SYNTHETIC_CLASSES):
            problems.append(f"{png}: shape {pred.shape} / max class {pred.max()} for an image of {size}")
    report.add("pipseg predict --crf", problems)


def eval_run(ckpt: Path, config: Path, profile: Profile, device: torch.device, out: Path,
             budget: Budget, report: Report) -> None:  # fmt: skip
    """``pipseg eval CONFIG --checkpoint``: scores for every val image."""
    scores = out / "eval.json"
    scores.unlink(missing_ok=True)
    problems = run_command("eval", pipseg_cmd(
        "eval", str(config), "--checkpoint", str(ckpt), "--device", device.type, "--json", str(scores)),
        out / "logs", budget)  # fmt: skip
    if not problems:
        result = json.loads(scores.read_text(encoding="utf-8"))
        miou, count = result.get("miou"), result.get("num_images")
        report.figures["eval_miou"] = miou
        if not (isinstance(miou, float) and 0 <= miou <= 1) or count != profile.n_val:
            problems.append(f"eval.json: miou {miou!r} over {count!r} images (expected {profile.n_val})")
    report.add("pipseg eval", problems)


def export_run(ckpt: Path, out: Path, budget: Budget, report: Report) -> None:
    """``pipseg export`` to ONNX; the command itself runs the file in onnxruntime and compares."""
    onnx_path = out / "model.onnx"
    onnx_path.unlink(missing_ok=True)
    problems = run_command("export", pipseg_cmd("export", str(ckpt), "--out", str(onnx_path)), out / "logs", budget)
    if not problems and not (onnx_path.is_file() and onnx_path.stat().st_size > 0):
        problems.append(f"{onnx_path} was not written")
    report.add("pipseg export (ONNX, checked on the CPU)", problems)


# --------------------------------------------------------------------------------------------
# Optional: segment_anything's vit_b


def time_sam(device: torch.device, report: Report, repeats: int = 10) -> None:
    """Milliseconds per image for SamPredictor (set_image + one box prompt), random weights.

    Optional: nothing happens when segment_anything does not import, and an error is recorded as
    a figure, not a failed check (pipseg does not depend on it).
    """
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError:
        return
    try:
        report.figures["sam_vit_b_ms_per_image"] = sam_ms_per_image(SamPredictor, sam_model_registry, device, repeats)
    except Exception as e:  # noqa: BLE001
        report.figures["sam_vit_b_error"] = f"{type(e).__name__}: {e}"[:300]


def sam_ms_per_image(predictor_cls: Any, registry: Any, device: torch.device, repeats: int) -> float:
    predictor = predictor_cls(registry["vit_b"]().to(device).eval())
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    box = np.array([100, 80, 300, 260])

    def one() -> None:
        predictor.set_image(image)
        predictor.predict(box=box, multimask_output=False)

    with torch.inference_mode():
        for _ in range(2):
            one()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            one()  # predict() returns numpy arrays: each image ends with a sync
        return 1000 * (time.perf_counter() - start) / repeats


# --------------------------------------------------------------------------------------------
# Report and main


def fmt(value: Any, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def report_table(report: Report) -> Table:
    f = report.figures
    table = Table(title=f"pipseg GPU check: {report.device_name} ({report.device})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("train images/s (torchrun, with data loading)",
         f"{fmt(f.get('train_images_per_s'), '.1f')} (median {fmt(f.get('train_images_per_s_median'), '.1f')})"),
        ("step images/s (in-process, no data loading)", fmt(f.get("step_images_per_s"), ".1f")),
        ("step time", fmt(f.get("step_ms"), ".1f", " ms")),
        ("loss share of the step (to_logit_grid + PIPLoss forward and backward)",
         fmt(f.get("loss_share"), ".1%")),
        ("peak memory (max_memory_allocated)", fmt(f.get("peak_memory_gib"), ".2f", " GiB")),
        ("SAM vit_b per image (fp32, random weights)",
         f.get("sam_vit_b_error") or fmt(f.get("sam_vit_b_ms_per_image"), ".1f", " ms")),
        ("stage times", ", ".join(f"{k} {v:.0f} s" for k, v in report.stages_s.items())),
    ]  # fmt: skip
    for key, value in rows:
        table.add_row(key, value)
    colour = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}
    for check in report.checks:
        table.add_row(check.name, f"[{colour[check.status]}]{check.status}[/] {check.detail}")
    return table


def run_stage(name: str, report: Report, fn: Callable[[], Any]) -> Any:
    """Run one stage, print its time; an unexpected error becomes a FAIL of that stage."""
    start = time.perf_counter()
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one broken stage must not hide the others
        detail = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]
        report.add(name, [f"{detail} at {raised_at(e)}"])
        traceback.print_exc()
        return None
    finally:
        report.stages_s[name] = time.perf_counter() - start
        total = time.perf_counter() - report.started
        print(f"gpu_check: {name} done in {report.stages_s[name]:.1f} s ({total:.0f} s in all)", flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def run_checks(args: argparse.Namespace, device: torch.device) -> Report:
    profile = TINY if args.tiny else full_profile()
    iters = args.iters or profile.iters
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(str(device), device_name(device), profile)
    budget = Budget(args.budget_s)
    run_stage("loss check", report, lambda: check_loss(device, report))
    run_stage("step check", report, lambda: check_step(profile, device, report))
    run_stage("process group", report, lambda: check_process_group(device, report))
    root = run_stage("data", report, lambda: make_data(profile, out, budget, report))
    config = write_config(profile, device, root or out / "voc", out, iters)
    ckpt = run_stage("train", report, lambda: train_run(config, device, out, budget, report))
    if ckpt is None:
        for name in ("pipseg predict --crf", "pipseg eval", "pipseg export (ONNX, checked on the CPU)"):
            report.add(name, [], skip="no checkpoint: training failed")
    else:
        run_stage("predict", report, lambda: predict_run(ckpt, root, profile, device, out, budget, report))
        run_stage("eval", report, lambda: eval_run(ckpt, config, profile, device, out, budget, report))
        run_stage("export", report, lambda: export_run(ckpt, out, budget, report))
    if device.type == "cuda" and not args.tiny:
        run_stage("sam", report, lambda: time_sam(device, report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (tiny_deeplab, crop 65, batch 2, 4 iterations)")
    parser.add_argument("--out", default="runs/gpu-check", help="work folder (data, run, logs, outputs)")
    parser.add_argument("--json", help="results file (default <out>/gpu_check.json)")
    parser.add_argument("--iters", type=int, help="training iterations (default 300; --tiny 4)")
    parser.add_argument("--budget-s", type=float, default=450, help="seconds for all the commands started")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: found no CUDA device (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); nothing to check.")  # fmt: skip
        return 0
    device = torch.device(args.device)
    report = run_checks(args, device)
    report.stages_s["total"] = time.perf_counter() - report.started
    Console(width=140).print(report_table(report))
    json_path = Path(args.json) if args.json else Path(args.out) / "gpu_check.json"
    atomic_write_json(json_path, {
        "device": report.device, "device_name": report.device_name, "torch": torch.__version__,
        "profile": asdict(report.profile), "figures": report.figures, "stages_s": report.stages_s,
        "checks": [asdict(c) for c in report.checks], "passed": not report.failed,
    })  # fmt: skip
    print(f"gpu_check: results in {json_path}; {'FAILED' if report.failed else 'all checks passed'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
