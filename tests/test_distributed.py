"""Training under torchrun on the CPU (gloo, 2 processes) equals one process with the same global
batch; and `torchrun ... pipseg train` runs end to end.

BatchNorm: tiny_deeplab's BN normalises over each rank's micro-batch, and torch's SyncBatchNorm
refuses CPU tensors (the engine converts to it only on CUDA), so per-rank statistics differ from
the single-process ones by design. The equality test therefore freezes BN (as ResNet-101 does),
drops dropout and uses a per-sample-mean criterion, which isolates what the engine owns: the
sampler split over ranks, micro-batches with ``no_sync``, gradient averaging and the step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from pipseg.data.synthetic import SYNTHETIC_CLASSES

SCRIPT = textwrap.dedent(
    '''
    import sys

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    from pipseg.config import load_config
    from pipseg.engine import train
    from pipseg.models import build_model


    def frozen(module):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                new = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, key).copy_(getattr(child, key).detach())
                setattr(module, name, new)
            elif isinstance(child, (nn.Dropout, nn.Dropout2d)):
                setattr(module, name, nn.Identity())
            else:
                frozen(child)
        return module


    class PixelMeanCE(nn.Module):
        def forward_parts(self, logits, labels, boxes):
            ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none").mean()
            return {"loss": ce, "box": torch.zeros_like(ce), "pixel": ce}


    cfg = load_config(sys.argv[1])
    torch.manual_seed(cfg.runtime.seed)  # every rank and the single process: the same init
    model = frozen(build_model(cfg.model.name, len(cfg.data.classes)))
    train(cfg, model=model, loss=PixelMeanCE(), force=True)
    '''
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]  # fmt: skip


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


def write_cfg(root: Path, tmp: Path, name: str, **optim: int) -> Path:
    raw = {
        "data": {"root": str(root), "classes": list(SYNTHETIC_CLASSES), "crop_size": 64,
                 "label_source": "box", "train_split": "train", "workers": 0},
        "model": {"name": "tiny_deeplab", "init": "none"},
        "optim": {"iters": 2, "batch_size": 8, "lr": 0.05, **optim},
        "runtime": {"device": "cpu", "out_dir": str(tmp / name), "log_every": 1, "val_every": 100,
                    "val_max_images": 3},
        "eval": {"pad_size": 97},
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_equal_one_with_the_same_global_batch(prepared_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "train_frozen.py"
    script.write_text(SCRIPT)
    # 2 ranks x 2 micro-batches of 2 (no_sync on the first) vs 1 process x 1 batch of 8.
    run(torchrun(str(script), str(write_cfg(prepared_root, tmp_path, "ddp", accumulate=2))))
    run([sys.executable, str(script), str(write_cfg(prepared_root, tmp_path, "single", accumulate=1))])

    ddp = torch.load(tmp_path / "ddp" / "last.pt", map_location="cpu", weights_only=True)
    single = torch.load(tmp_path / "single" / "last.pt", map_location="cpu", weights_only=True)
    start = json.loads((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2 and start["micro_batch"] == 2 and start["accumulate"] == 2
    assert ddp["iteration"] == single["iteration"] == 2
    assert len(ddp["rng"]["other_ranks"]) == 1  # every rank's RNG is saved for resume
    for k, v in single["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # Validation is sharded over the ranks and summed: the same figures as one process.
    assert ddp["metrics"]["miou"] == pytest.approx(single["metrics"]["miou"], abs=1e-6)


def test_torchrun_cli_end_to_end(prepared_root: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 --no-python pipseg train CONFIG` with the real tiny model."""
    pipseg = Path(sys.executable).parent / "pipseg"
    config = write_cfg(prepared_root, tmp_path, "cli", accumulate=1)
    run(torchrun("--no-python", str(pipseg), "train", str(config)))
    out = tmp_path / "cli"
    for name in ("last.pt", "best.pt", "log.jsonl", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]


INTERRUPT_SCRIPT = textwrap.dedent(
    '''
    import json
    import os
    import signal
    import sys

    import pipseg.engine.trainer as trainer
    from pipseg.config import load_config

    rank, steps = int(os.environ["RANK"]), []
    step = trainer.train_step


    def step_then_ctrl_c_on_rank_1(*args, **kwargs):
        out = step(*args, **kwargs)
        steps.append(1)
        if rank == 1 and len(steps) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # only this rank is asked to stop
        return out


    trainer.train_step = step_then_ctrl_c_on_rank_1
    result = trainer.train(load_config(sys.argv[1]))
    with open(f"{sys.argv[2]}.{rank}.json", "w") as f:
        json.dump({"iteration": result.iteration, "interrupted": result.interrupted, "steps": len(steps)}, f)
    '''
)


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_iteration(prepared_root: Path, tmp_path: Path) -> None:
    """Rank 1 alone gets SIGINT during iteration 2: the flag is voted over the ranks, so both stop
    after iteration 2 and last.pt (rank 0 writes it, with both ranks' RNG) is at iteration 2."""
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_SCRIPT)
    config = write_cfg(prepared_root, tmp_path, "stop", iters=6)
    run(torchrun(str(script), str(config), str(tmp_path / "result")))
    results = [json.loads((tmp_path / f"result.{rank}.json").read_text()) for rank in (0, 1)]
    assert results == [{"iteration": 2, "interrupted": "SIGINT", "steps": 2}] * 2
    ckpt = torch.load(tmp_path / "stop" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 2 and len(ckpt["rng"]["other_ranks"]) == 1
