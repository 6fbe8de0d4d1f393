"""Ctrl-C during training: a checkpoint at the current iteration, one line saying how to resume,
exit code 130; the resumed run ends with the weights of a run never interrupted, and its wall
time counts every part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import Config, validate_config
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.engine import train

runner = CliRunner()


def make_cfg(root: Path, out_dir: Path, **sections: dict) -> Config:
    """tiny_deeplab from scratch, crops of 64, batch 4, 4 iterations (as tests/test_train.py)."""
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


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigint_saves_the_current_iteration_and_resume_is_exact(prepared_root: Path, tmp_path: Path) -> None:
    """SIGINT (a real signal, sent to this process after iteration 3) stops the run after that
    iteration with last.pt at 3 (not a periodic checkpoint: ckpt_every is 2); resuming gives the
    weights of 4 straight iterations, and the wall time of the part before the stop is kept."""
    cfg = make_cfg(prepared_root, tmp_path / "a")
    handler = signal.getsignal(signal.SIGINT)

    def press_ctrl_c(event: dict) -> None:
        if event["event"] == "iter" and event["iteration"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train(cfg, progress=press_ctrl_c)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert stopped.interrupted == "SIGINT" and stopped.iteration == 3 and not stopped.finished
    ckpt = load(tmp_path / "a" / "last.pt")
    assert ckpt["iteration"] == 3 and ckpt["wall_time_s"] > 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["interrupted"] == "SIGINT"

    ckpt["wall_time_s"] = 1000.0  # as if the first part had taken 1000 s
    torch.save(ckpt, tmp_path / "a" / "last.pt")
    before = time.perf_counter()
    resumed = train(cfg, resume=True)
    took = time.perf_counter() - before
    assert resumed.iteration == 4 and resumed.finished and resumed.interrupted is None
    assert 1000.0 < resumed.summary["wall_time_s"] < 1000.0 + took
    assert 1000.0 < load(tmp_path / "a" / "last.pt")["wall_time_s"] < 1000.0 + took

    straight = train(make_cfg(prepared_root, tmp_path / "b"))
    a, b = load(resumed.last_checkpoint)["model"], load(straight.last_checkpoint)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]


def test_ctrl_c_on_the_command_line(prepared_root: Path, tmp_path: Path) -> None:
    """`pipseg train` in its own process group (as in a terminal, Ctrl-C reaches the loader
    worker too): exit 130, one line naming the checkpoint and the resume command, last.pt at the
    iteration it stopped; `--resume` continues from there."""
    cfg = make_cfg(prepared_root, tmp_path / "run", data={"workers": 1}, optim={"iters": 500},
                   runtime={"val_every": 1000, "ckpt_every": 1000})  # fmt: skip
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    log = tmp_path / "run" / "log.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    proc = subprocess.Popen([sys.executable, "-m", "pipseg", "train", str(config)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if log.is_file() and any(json.loads(r).get("kind") == "train" for r in log.read_text().splitlines()[:-1]):
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    stopped = load(tmp_path / "run" / "last.pt")["iteration"]
    assert 1 <= stopped < 500
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"stopped: SIGINT at iteration {stopped}; saved {tmp_path / 'run' / 'last.pt'}")
    assert f"pipseg train {config} --resume" in lines[0]
    records = [json.loads(r) for r in log.read_text().splitlines()]
    assert max(r["iteration"] for r in records if r["kind"] == "train") == stopped

    resumed = runner.invoke(app, ["train", str(config), "--resume", "--set", f"optim.iters={stopped + 1}"])
    assert resumed.exit_code == 0, resumed.output
    records = [json.loads(r) for r in log.read_text().splitlines()]
    assert [r["start_iteration"] for r in records if r["kind"] == "start"] == [0, stopped]
    assert load(tmp_path / "run" / "last.pt")["iteration"] == stopped + 1
