"""Config validation: shipped configs, every kind of bad config, and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import Config, load_config
from pipseg.errors import PipsegError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
runner = CliRunner()


def test_configs_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"sdi", "wssl", "full", "box", "demo"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # The keys scripts rely on exist with their meanings.
    for key in ("data.root", "model.name", "loss.kind", "optim.iters", "optim.batch_size",
                "optim.lr", "runtime.device", "runtime.out_dir"):  # fmt: skip
        section, field = key.split(".")
        assert hasattr(getattr(cfg, section), field), key
    assert cfg.loss.kind in ("pip", "ce")


@pytest.mark.parametrize("name", ["sdi", "wssl"])
def test_paper_runs_use_the_published_recipe(name: str):
    """METHOD.md section 3: the two box-supervised runs of the paper."""
    cfg = load_config(Path("configs") / f"{name}.yaml")
    assert cfg.model.name == "vgg16_largefov"
    assert cfg.loss.kind == "pip"
    assert (cfg.loss.lamb, cfg.loss.alpha, cfg.loss.tau, cfg.loss.radius, cfg.loss.sigma) == (
        0.2, 0.5, 5.0, 5, 2.0)  # fmt: skip
    o = cfg.optim
    assert (o.lr, o.momentum, o.weight_decay, o.batch_size, o.iters, o.poly_power) == (
        1e-3, 0.9, 5e-4, 30, 20000, 0.9)  # fmt: skip
    assert o.classifier_lr_mult == 1.0
    assert cfg.data.crop_size == 321
    assert cfg.data.scales == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert cfg.data.flip is True
    assert cfg.data.train_split == "train_aug" and cfg.data.val_split == "val"
    assert cfg.data.label_source == name


def test_full_config_is_fully_supervised():
    cfg = load_config(Path("configs/full.yaml"))
    assert cfg.data.label_source == "gt" and cfg.loss.kind == "ce"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


BAD_CONFIGS = {
    "unknown_key": ("optim:\n  lrr: 0.1\n", "optim.lrr", "unknown key"),
    "unknown_section": ("optimiser:\n  lr: 0.1\n", "optimiser", "unknown key"),
    "wrong_type": ("optim:\n  iters: many\n", "optim.iters", "integer"),
    "out_of_range": ("optim:\n  lr: 0\n", "optim.lr", "greater than 0"),
    "alpha_range": ("loss:\n  alpha: 1.5\n", "loss.alpha", "less than or equal to 1"),
    "bad_choice": ("runtime:\n  device: tpu\n", "runtime.device", "use auto, cpu, cuda or cuda:N"),
    "bad_kind": ("loss:\n  kind: focal\n", "loss.kind", "'pip' or 'ce'"),
    "malformed": ("optim: [lr: 0.1\n", "malformed YAML", "line"),
    "not_mapping": ("- 1\n- 2\n", "mapping", "list"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_line_and_exit_2(tmp_path: Path, case: str):
    text, key, reason = BAD_CONFIGS[case]
    path = _write(tmp_path, text)
    result = runner.invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and key in lines[0] and reason in lines[0], lines[0]


def test_missing_file_exit_2(tmp_path: Path):
    result = runner.invoke(app, ["config", "show", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output and "not found" in result.output


def test_several_problems_one_line_each(tmp_path: Path):
    path = _write(tmp_path, "optim:\n  lr: -1\n  batch_size: 0\ndata:\n  crop_sz: 3\n")
    result = runner.invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 3
    assert any("optim.lr" in ln for ln in lines) and any("data.crop_sz" in ln for ln in lines)


def test_set_overrides_reach_the_resolved_config_with_types():
    cfg = load_config(
        Path("configs/sdi.yaml"),
        ["optim.lr=0.0005", "data.crop_size=257", "data.flip=false", "runtime.device=cpu",
         "data.scales=[1.0, 2]", "runtime.out_dir=/tmp/x", "model.init=none"],
    )  # fmt: skip
    assert cfg.optim.lr == pytest.approx(0.0005) and isinstance(cfg.optim.lr, float)
    assert cfg.data.crop_size == 257 and isinstance(cfg.data.crop_size, int)
    assert cfg.data.flip is False
    assert cfg.data.scales == [1.0, 2.0]
    assert cfg.runtime.out_dir == Path("/tmp/x")
    assert cfg.model.init == "none"


def test_set_via_cli_prints_resolved_yaml():
    result = runner.invoke(
        app, ["config", "show", "configs/sdi.yaml", "--set", "optim.lr=0.0005",
              "--set", "data.crop_size=257"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["optim"]["lr"] == pytest.approx(0.0005)
    assert resolved["data"]["crop_size"] == 257
    assert resolved["loss"]["kind"] == "pip"


def test_bad_override_names_the_key():
    with pytest.raises(PipsegError, match=r"optim\.lr"):
        load_config(Path("configs/sdi.yaml"), ["optim.lr=-3"])
    with pytest.raises(PipsegError, match="KEY=VALUE"):
        load_config(Path("configs/sdi.yaml"), ["optim.lr"])
    with pytest.raises(PipsegError, match="not a section"):
        load_config(Path("configs/sdi.yaml"), ["loss.kind.x=1"])


def test_accumulate_must_divide_batch():
    with pytest.raises(PipsegError, match="divisible"):
        load_config(None, ["optim.batch_size=30", "optim.accumulate=4"])


def test_cli_help_and_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "pipseg" in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0


def test_model_names_match_the_registry(tmp_path: Path):
    from typing import get_args

    from pipseg.config import ModelName
    from pipseg.models import MODEL_NAMES

    assert set(get_args(ModelName)) == set(MODEL_NAMES)
    path = _write(tmp_path, "model:\n  name: vgg19\n")
    result = runner.invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2 and "model.name" in result.output


def test_config_path_is_a_folder(tmp_path: Path):
    result = runner.invoke(app, ["config", "show", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder" in result.output


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "CUDA:1"])
def test_device_names_accepted(name: str):
    assert load_config(None, [f"runtime.device={name}"]).runtime.device == name.lower()


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "mps", "cpu:0"])
def test_bad_device_names_the_key(name: str):
    with pytest.raises(PipsegError, match=r"runtime\.device: .*auto, cpu, cuda or cuda:N"):
        load_config(None, [f"runtime.device={name}"])


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n"])
def test_empty_config_is_an_error_naming_the_file(tmp_path: Path, text: str):
    """An empty file does not silently mean "the whole VOC recipe"."""
    path = _write(tmp_path, text)
    result = runner.invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "empty" in lines[0], lines


def test_classes_unset_by_default_and_still_validated(tmp_path: Path):
    """Unset data.classes (None) means "the prepared manifest's list"; a set list is checked."""
    assert load_config(Path("configs/sdi.yaml")).data.classes is None
    assert load_config(None, ["data.classes=[background, cat]"]).data.classes == ["background", "cat"]
    with pytest.raises(PipsegError, match=r"data\.classes.*unique"):
        load_config(None, ["data.classes=[background, Cat, cat]"])
    with pytest.raises(PipsegError, match=r"data\.classes"):
        load_config(None, ["data.classes=[background]"])
