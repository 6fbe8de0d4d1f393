"""The command line itself: start-up without torch, plain help pages, shared options, class names."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipseg.cli import COMMANDS, app
from pipseg.data.labels import write_label
from pipseg.data.lists import class_names
from pipseg.errors import PipsegError

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "pipseg" / "cli"
runner = CliRunner()
# How typer 0.29 writes value types when left alone: <bool>, <list[str]>, <int range>, <path> ...
TYPER_TYPE = re.compile(r"<(?:bool|str|int|float|path|file|dir|list\[[^>]*\]|[a-z]+ range)>")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"},
    )  # fmt: skip


# --------------------------------------------------------------------------- start-up


def test_version_imports_no_torch() -> None:
    """`-X importtime` lists every module a run imports: --version must not reach torch."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipseg", "--version"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().startswith("pipseg ")
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "pipseg.cli" in imported  # the listing is real
    assert not {m for m in imported if m.split(".")[0] in ("torch", "torchvision", "numpy", "cv2")}


def test_help_imports_no_torch_and_no_command_module() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pipseg.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'pipseg.cli.'))))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert ast.literal_eval(done.stdout) == ["pipseg.cli._common", "pipseg.cli._help"]


def test_command_help_imports_no_torch() -> None:
    """Each command's module keeps torch (and the library's heavy parts) inside its function."""
    names = [[name] for name in COMMANDS] + [["config", "show"]]
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pipseg.cli import app\n"
        f"for args in {names!r}:\n"
        "    r = CliRunner().invoke(app, [*args, '--help'])\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "    assert 'torch' not in sys.modules, args\n"
        "print('ok')\n"
    )
    done = _python(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# --------------------------------------------------------------------------- help pages


@pytest.mark.parametrize("args", [[], *([n] for n in COMMANDS), ["config", "show"]])
def test_help_shows_plain_value_names(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not TYPER_TYPE.findall(result.output), TYPER_TYPE.findall(result.output)
    assert "[x>=" not in result.output and "[x<=" not in result.output


def test_help_value_names_are_click_style() -> None:
    result = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ --")}
    assert "INTEGER" in rows["--num-classes"] and "PATH" in rows["--classes"]
    assert "TEXT" in rows["--device"] and "TEXT" in rows["--set"]
    assert not re.search(r"--crf\s+(PATH|TEXT|BOOLEAN)", rows["--crf"])  # a flag takes no value
    assert "[CONFIG]" in result.output  # arguments are named in capitals
    export = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert "[onnx|torchscript]" in export.output


def test_root_summaries_match_the_commands() -> None:
    """`pipseg --help` lists COMMANDS' summaries without importing: they must be the docstrings."""
    listed = runner.invoke(app, ["--help"], env={"COLUMNS": "300"}).output
    for name, entry in COMMANDS.items():
        target = getattr(importlib.import_module(f"pipseg.cli.{entry.module}"), entry.attr)
        doc = target.info.help if isinstance(target, typer.Typer) else inspect.getdoc(target)
        assert doc.split("\n\n")[0] == entry.summary, name
        assert f"{name}  " in listed and entry.summary in listed


def test_typo_suggests_the_command() -> None:
    result = runner.invoke(app, ["evl"])
    assert result.exit_code == 2 and "eval" in result.output


# --------------------------------------------------------------------------- one home per option


def test_shared_options_are_declared_once() -> None:
    sources = {p.name: p.read_text() for p in CLI_DIR.glob("*.py") if p.name != "prepare_cmd.py"}
    for flag in ('"--set"', '"--device"', '"--checkpoint"', '"--workers"'):
        homes = [name for name, text in sources.items() if flag in text]
        assert homes == ["_common.py"], (flag, homes)


def test_commands_import_no_sibling_command() -> None:
    for path in CLI_DIR.glob("*_cmd.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not re.fullmatch(r"pipseg\.cli\.\w+_cmd", node.module), (path.name, node.module)
    assert "def resolve_device" not in (CLI_DIR / "predict_cmd.py").read_text()


def test_device_names_go_through_pipseg_device(tmp_path: Path) -> None:
    # torch.device("meta") parses; only pipseg.device.resolve_device refuses it by name.
    args = ["predict", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--device", "meta"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "pipseg runs on cpu or cuda" in result.output, result.output


# --------------------------------------------------------------------------- class names


def test_class_names() -> None:
    assert class_names(3) == ["class_0", "class_1", "class_2"]
    assert class_names(2, ["background", "cat"]) == ["background", "cat"]
    with pytest.raises(PipsegError, match="3 names for 2 classes"):
        class_names(2, ["a", "b", "c"])


def _pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    gt = np.array([[0, 0, 1, 1], [2, 2, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2]], dtype=np.uint8)
    write_label(tmp_path / "gt" / "a.png", gt)
    write_label(tmp_path / "pred" / "a.png", pred)
    return tmp_path / "pred", tmp_path / "gt", pred, gt


def test_eval_folder_names_rows_from_classes_file(tmp_path: Path) -> None:
    pred_dir, gt_dir, pred, gt = _pair(tmp_path)
    (tmp_path / "names.txt").write_text("# my classes\nbackground\nleaf\nstem\n")
    args = ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--classes", str(tmp_path / "names.txt"),
            "--json", str(tmp_path / "s.json")]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["classes"] == ["background", "leaf", "stem"]
    valid = gt != 255
    for c, name in enumerate(saved["classes"]):  # IoU from its definition, per named row
        inter = np.sum((pred == c) & (gt == c) & valid)
        union = np.sum(((pred == c) | (gt == c)) & valid)
        assert saved["iou"][c] == pytest.approx(inter / union)
        row = next(line for line in result.output.splitlines() if line.split()[:1] == [name])
        assert f"{100 * inter / union:.2f}" in row

    mismatch = runner.invoke(app, [*args[:7], "--num-classes", "4"])
    assert mismatch.exit_code == 2 and "names.txt" in mismatch.output and "--num-classes" in mismatch.output


def test_eval_folder_without_names_guesses_no_dataset(tmp_path: Path) -> None:
    pred_dir, gt_dir, _, _ = _pair(tmp_path)
    for n in ("3", "21"):
        result = runner.invoke(app, ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", n])
        assert result.exit_code == 0, result.output
        assert "class_2" in result.output and "aeroplane" not in result.output


def test_eval_checkpoint_mode_refuses_folder_options(tmp_path: Path) -> None:
    # --classes names a checkpoint's rows too (issue 15); --num-classes and --images stay folder mode's
    (tmp_path / "c.yaml").write_text("{}\n")
    for extra in (["--num-classes", "3"], ["--images", str(tmp_path)]):
        result = runner.invoke(app, ["eval", str(tmp_path / "c.yaml"), "--checkpoint", "x.pt", *extra])
        assert result.exit_code == 2 and "folder mode" in result.output
    result = runner.invoke(app, ["eval", "--pred", str(tmp_path), "--gt", str(tmp_path), "--tile", "64"])
    assert result.exit_code == 2 and "checkpoint mode" in result.output
