"""`pipseg.runs`: rows and curves from the files a run leaves."""

import json

import numpy as np
import pytest
import yaml

from pipseg.errors import PipsegError
from pipseg.runs import find_runs, plot_val_curves, read_run, short_names


def _fake_run(folder, source, kind, val, finished, wall=None):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"label_source": source}, "loss": {"kind": kind, "lamb": 0.2}, "optim": {"iters": 40}}))
    records = [{"kind": "train", "iteration": i, "loss": 1.0 / i} for i in (10, 20, 30, 40)]
    records += [{"kind": "val", "iteration": it, "miou": m} for it, m in val]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"broken')
    if finished:
        (folder / "summary.json").write_text(json.dumps({"finished": True, "iteration": 40, "wall_time_s": wall}))


def test_rows_curves_and_names(tmp_path):
    _fake_run(tmp_path / "a", "crf", "pip", [(20, 0.4), (40, 0.35)], True, 12.5)
    _fake_run(tmp_path / "nested" / "b", "box", "ce", [(20, 0.3)], False)
    runs = find_runs([tmp_path])
    assert [p.name for p in runs] == ["a", "b"]
    a, b = (read_run(p) for p in runs)
    assert (a.label_source, a.loss, a.lamb, a.finished, a.wall_time_s) == ("crf", "pip", 0.2, True, 12.5)
    assert (a.best_miou, a.last_miou, a.iteration) == (0.4, 0.35, 40)
    assert (b.loss, b.lamb, b.finished, b.iteration, b.best_miou) == ("ce", None, False, 40, 0.3)
    assert short_names([a, b]) == ["a", "nested/b"]
    png = plot_val_curves([a, b], tmp_path / "out" / "curves.png", short_names([a, b]))
    import cv2

    picture = cv2.imread(str(png))
    assert picture is not None and picture.shape[0] > 100 and np.std(picture) > 0


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(PipsegError, match="no training run"):
        find_runs([tmp_path])
    with pytest.raises(PipsegError, match="not a folder"):
        find_runs([tmp_path / "missing"])


def test_cli_runs_table_and_curves(tmp_path):
    from typer.testing import CliRunner

    from pipseg.cli import app

    _fake_run(tmp_path / "a", "crf", "pip", [(20, 0.4), (40, 0.35)], True, 3725.0)
    _fake_run(tmp_path / "b", "box", "ce", [(20, 0.3)], False)
    result = CliRunner().invoke(app, ["runs", str(tmp_path), "--curves", str(tmp_path / "c.png")],
                                env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "crf" in result.output and "val curves written" in result.output
    from rich.console import Console

    from pipseg.cli.runs_cmd import runs_table

    runs = [read_run(p) for p in find_runs([tmp_path])]
    wide = Console(width=200, record=True)
    wide.print(runs_table(runs, short_names(runs)))
    cells = [line.replace("│", " ").split() for line in wide.export_text().splitlines()]
    rows = {c[0]: c for c in cells if c[:1] in (["a"], ["b"])}
    assert rows["a"][1:8] == ["crf", "pip", "0.2", "40/40", "40.00", "35.00", "1h02m"]
    assert rows["b"][1:6] == ["box", "ce", "-", "40/40", "(unfinished)"]
    import cv2

    picture = cv2.imread(str(tmp_path / "c.png"))
    assert picture is not None and picture.shape[1] == 800  # 8 inches at 100 dpi
    missing = CliRunner().invoke(app, ["runs", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "not a folder" in missing.output
