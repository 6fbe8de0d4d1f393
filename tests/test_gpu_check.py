"""benchmarks/gpu_check.py: the CPU mode runs every stage end to end; without CUDA it only says so;
a failing command, a wrong loss or a failed check is reported and sets the exit code."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CHECKS = {
    "loss on device = float64 CPU", "no host sync in the training step", "process group (gloo)",
    "pipseg prepare", "torchrun pipseg train", "pipseg predict --crf", "pipseg eval",
    "pipseg export (ONNX, checked on the CPU)",
}  # fmt: skip


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_without_cuda_it_says_so_and_exits_0(gpu_check, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "run")]) == 0
    assert "found no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_failed_check_exits_1_and_is_in_the_json(gpu_check, monkeypatch, tmp_path) -> None:
    def one_failure(args, device):
        report = gpu_check.Report(str(device), "test", gpu_check.TINY)
        report.add("a check", [])
        report.add("another check", ["it broke"])
        return report

    monkeypatch.setattr(gpu_check, "run_checks", one_failure)
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["passed"] is False
    assert [(c["name"], c["status"], c["detail"]) for c in result["checks"]] == [
        ("a check", "PASS", ""), ("another check", "FAIL", "it broke")
    ]


def test_compare_reports_value_and_gradient_differences(gpu_check) -> None:
    grad = torch.linspace(-1, 1, 50, dtype=torch.float64).reshape(2, 25)
    ref = (2.5, grad)
    assert gpu_check.compare("same", ref, (2.5, grad.clone()), rtol=1e-9, grad=True) == []
    nudged = grad.clone()
    nudged[1, 3] += 1e-6
    [problem] = gpu_check.compare("nudged", ref, (2.5, nudged), rtol=1e-9, grad=True)
    assert "gradient off by 1e-06" in problem
    assert gpu_check.compare("value only", ref, (2.5, nudged), rtol=1e-9, grad=False) == []
    assert len(gpu_check.compare("value", ref, (2.5 + 1e-6, grad), rtol=1e-9, grad=True)) == 1
    assert len(gpu_check.compare("nan", ref, (float("nan"), grad), rtol=1e-9, grad=False)) == 1


def test_run_command_reports_exit_code_last_line_and_timeout(gpu_check, tmp_path) -> None:
    fail = [sys.executable, "-c", "import sys; print('first'); print('what broke'); sys.exit(3)"]
    [problem] = gpu_check.run_command("fails", fail, tmp_path, gpu_check.Budget(60))
    assert "exit code 3: what broke" in problem
    assert (tmp_path / "fails.log").read_text().splitlines()[-1] == "what broke"
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    [problem] = gpu_check.run_command("sleeps", sleep, tmp_path, gpu_check.Budget(6))
    assert "timed out" in problem
    assert gpu_check.run_command("ok", [sys.executable, "-c", "pass"], tmp_path, gpu_check.Budget(60)) == []


@pytest.mark.slow
def test_cpu_tiny_mode_runs_every_stage(tmp_path) -> None:
    out, result_path = tmp_path / "run", tmp_path / "result.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), "--json", str(result_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(result_path.read_text())
    statuses = {c["name"]: c["status"] for c in result["checks"]}
    assert set(statuses) == CHECKS
    assert statuses.pop("no host sync in the training step") == "SKIP"
    assert set(statuses.values()) == {"PASS"}, result["checks"]
    f = result["figures"]
    assert 0 < f["loss_share"] < 1 and f["step_images_per_s"] > 0 and f["train_images_per_s"] > 0
    assert f["train_world_size"] == 1 and 0 <= f["eval_miou"] <= 1
    assert set(f["step_phases_ms"]) == {"forward", "loss", "loss_backward", "backward", "step"}
    # predict wrote label maps of the val images' size (the script checks them; look once more)
    for png in (out / "predict").glob("*.png"):
        with Image.open(out / "voc" / "JPEGImages" / f"{png.stem}.jpg") as image:
            assert Image.open(png).size == image.size
    assert len(list((out / "predict").glob("*.png"))) == 2
    assert (out / "model.onnx").stat().st_size > 0
    assert "found no CUDA device" not in proc.stdout
