"""The hard accuracy benchmark's schedule: which runs each setting needs, and what trains on what."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_hard.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("accuracy_hard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_hard"] = module
    spec.loader.exec_module(module)
    return module


def test_every_round_gets_the_chain_of_runs_that_make_its_labels() -> None:
    bench = load_benchmark()
    names = bench.with_teachers(["refine-2-pip-l1", "refine-1-ce", "refine-1-pip-l1+agree"])
    assert set(names) == {
        "crf-pip-l1", "refine-1-pip-l1", "refine-2-pip-l1",  # round 2 needs round 1, then crf
        "crf-ce", "refine-1-ce",
        "refine-1-pip-l1+agree",  # its teacher is crf-pip-l1, already there
    }  # fmt: skip
    for name in names:  # every teacher comes before the rounds it teaches
        k = bench.round_of(name)
        if k:
            assert names.index(bench.teacher_of(k, bench.loss_of(name))) < names.index(name)


def test_settings_name_their_source_loss_and_round() -> None:
    bench = load_benchmark()
    settings = bench.all_settings()
    assert settings["crf-pip-l1"] == {
        "data.label_source": "crf",
        "loss.kind": "pip",
        "loss.lamb": 1.0,
    }
    assert settings["full"]["data.label_source"] == "gt"
    assert (bench.round_of("refine-2-pip"), bench.loss_of("refine-2-pip")) == (2, "pip")
    assert (bench.round_of("consensus-ce"), bench.loss_of("consensus-ce")) == (0, "ce")
    assert bench.teacher_of(2, "pip-l1+agree") == "refine-1-pip-l1+agree"
    assert bench.teacher_of(1, "pip-l1+agree") == "crf-pip-l1"
    sources = {bench.refine_source(1, loss, "scratch", 0) for loss in ("pip-l1", "pip-l1+agree")}
    assert len(sources) == 2 and all("+" not in s for s in sources)
    assert set(bench.CORE) <= set(settings)
    assert len(settings) == 1 + len(bench.SOURCES) * len(bench.LOSSES) + len(bench.EXPLORE)
