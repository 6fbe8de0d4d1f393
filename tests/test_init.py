"""`model.init`: a checkpoint trained on other classes (everything but the classifier loads, the
classifier starts as METHOD.md section 5's fc8), the same classes (everything loads), and the
authors' DeepLab-LargeFOV init file (`deeplab-init`), checked with files that have its layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import ModelConfig, validate_config
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.engine import train
from pipseg.errors import PipsegError
from pipseg.models import CAFFE_BGR, build_initialised_model, build_model, model_from_checkpoint

runner = CliRunner()
# The DeepLab-V1-PyTorch layout (its nets/vgg.py, loaded strictly by the published training
# code): one nn.Sequential `features`, conv1_1 at 0 ... fc6 at 32, fc7 at 35, fc8 at 38.
AUTHORS_KEYS = [f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 32, 35, 38)
                for p in ("weight", "bias")]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the CPU is shared and oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(root: Path, out_dir: Path, classes: list[str] | None, **model: str):
    raw = {
        "data": {"root": str(root), "crop_size": 64, "label_source": "box", "train_split": "train", "workers": 0},
        "model": {"name": "tiny_deeplab", "init": "none", **model},
        "optim": {"iters": 1, "batch_size": 4, "lr": 0.01},
        "runtime": {"device": "cpu", "out_dir": str(out_dir), "val_every": 100, "val_max_images": 2},
        "eval": {"pad_size": 97},
    }  # fmt: skip
    if classes is not None:
        raw["data"]["classes"] = classes
    return validate_config(raw)


def box_only_dataset(root: Path, classes: list[str]) -> Path:
    """Synthetic VOC data without any mask, prepared for ``classes`` (others skipped)."""
    from pipseg.data.prepare import prepare_dataset
    from pipseg.data.synthetic import make_synthetic_voc

    make_synthetic_voc(root, 8, 2, (96, 72), seed=2)
    for mask in (root / "SegmentationClass").glob("*.png"):
        mask.unlink()
    prepare_dataset(root, pseudo=["box"], classes=classes, skip_unknown=True, workers=1)
    return root


def assert_fc8_init(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """METHOD.md section 5: fc8 ~ N(0, 0.01), bias 0."""
    assert torch.count_nonzero(bias) == 0
    assert abs(weight.std().item() - 0.01) < 0.003 and abs(weight.mean().item()) < 0.003


def test_start_from_a_model_trained_on_other_classes(prepared_root: Path, tmp_path: Path) -> None:
    """Run A trains on 6 classes; run B (3 classes, box-only data) starts from A's last.pt: all
    but the classifier loads, the classifier is re-initialised, the header says so once."""
    a = train(tiny_cfg(prepared_root, tmp_path / "a", list(SYNTHETIC_CLASSES))).last_checkpoint
    a_state = torch.load(a, map_location="cpu", weights_only=True)["model"]
    three = list(SYNTHETIC_CLASSES[:3])
    root = box_only_dataset(tmp_path / "VOC", three)

    cfg = tiny_cfg(root, tmp_path / "b", None, init=str(a))
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("classifier re-initialised") == 1, result.output
    assert "the file has 6 classes (background, disc, ring, triangle, ...), this run 3 classes" in text
    b = torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=True)
    assert b["classes"] == three and "classifier re-initialised" in b["init"]["classifier"]

    torch.manual_seed(0)
    model, record = build_initialised_model(cfg.model, 3, classes=three)
    state = model.state_dict()
    for k, v in a_state.items():
        if k.startswith("classifier."):
            assert state[k].shape[0] == 3 and v.shape[0] == 6
        else:
            assert torch.equal(state[k], v), k
    assert_fc8_init(state["classifier.weight"], state["classifier.bias"])
    assert record["kind"] == "file" and record["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()


def test_same_classes_load_everything_other_names_do_not(prepared_root: Path, tmp_path: Path) -> None:
    a = train(tiny_cfg(prepared_root, tmp_path / "a", list(SYNTHETIC_CLASSES))).last_checkpoint
    a_state = torch.load(a, map_location="cpu", weights_only=True)["model"]
    same, record = build_initialised_model(ModelConfig(name="tiny_deeplab", init=str(a)), 6, list(SYNTHETIC_CLASSES))
    assert "classifier" not in record
    for k, v in a_state.items():
        assert torch.equal(same.state_dict()[k], v), k

    renamed = ["background", "cat", "dog", "cow", "owl", "bee"]  # 6 classes, other meanings
    other, record = build_initialised_model(ModelConfig(name="tiny_deeplab", init=str(a)), 6, renamed)
    assert "the file has 6 classes (background, disc, ring, triangle, ...), this run 6 classes" in record["classifier"]
    assert not torch.equal(other.state_dict()["classifier.weight"], a_state["classifier.weight"])
    assert torch.equal(other.state_dict()["stem.0.0.weight"], a_state["stem.0.0.weight"])


def write_authors_file(path: Path, num_classes: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """A file with deeplab_largeFOV.pth's layout: a plain state dict of the 16 convs."""
    torch.manual_seed(7)
    state = {prefix + k: v for k, v in build_model("vgg16_largefov", num_classes).state_dict().items()}
    assert sorted(state) == sorted(prefix + k for k in AUTHORS_KEYS)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("prefix", ["", "module."])
def test_deeplab_init_loads_the_authors_file(tmp_path: Path, prefix: str) -> None:
    """21 classes: every key, fc8 included, as in the file; Caffe BGR input recorded. Other
    class counts: fc8 re-initialised with one line, everything else from the file."""
    file = write_authors_file(tmp_path / "deeplab_largeFOV.pth", 21, prefix)
    cfg = ModelConfig(name="vgg16_largefov", init="deeplab-init", weights_dir=tmp_path)
    model, record = build_initialised_model(cfg, 21)
    assert model.input_convention == CAFFE_BGR
    assert record == {"kind": "deeplab-init", "file": str(tmp_path / "deeplab_largeFOV.pth"),
                      "sha256": hashlib.sha256((tmp_path / "deeplab_largeFOV.pth").read_bytes()).hexdigest()}  # fmt: skip
    for k, v in model.state_dict().items():
        assert torch.equal(v, file[prefix + k]), k

    model, record = build_initialised_model(cfg, 4, ["background", "a", "b", "c"])
    assert model.input_convention == CAFFE_BGR
    assert "classifier re-initialised" in record["classifier"] and "file has 21 classes" in record["classifier"]
    for k, v in model.state_dict().items():
        if not k.startswith("features.38."):
            assert torch.equal(v, file[prefix + k]), k
    assert_fc8_init(model.features[38].weight, model.features[38].bias)


def test_deeplab_init_missing_file_says_where_to_get_it(prepared_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(prepared_root, tmp_path / "run", list(SYNTHETIC_CLASSES),
                   name="vgg16_largefov", init="deeplab-init", weights_dir=str(tmp_path / "w"))  # fmt: skip
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "deeplab_largeFOV.pth" in lines[0] and str(tmp_path / "w") in lines[0]
    assert "https://github.com/wangleihitcs/DeepLab-V1-PyTorch" in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(PipsegError, match="model.init: deeplab-init is the start file of vgg16_largefov"):
        build_initialised_model(ModelConfig(name="tiny_deeplab", init="deeplab-init", weights_dir=tmp_path), 3)


def test_deeplab_init_run_records_caffe_bgr(prepared_root: Path, tmp_path: Path) -> None:
    """A run started from the authors' file keeps its input convention in the checkpoint, so
    predict, eval and export normalise as the weights expect."""
    write_authors_file(tmp_path / "deeplab_largeFOV.pth", 21)
    cfg = tiny_cfg(prepared_root, tmp_path / "run", None,
                   name="vgg16_largefov", init="deeplab-init", weights_dir=str(tmp_path))  # fmt: skip
    cfg.optim.batch_size, cfg.runtime.val_max_images = 2, 1
    result = train(cfg)
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["input_convention"]["name"] == "caffe_bgr" and ckpt["init"]["kind"] == "deeplab-init"
    assert "file has 21 classes" in ckpt["init"]["classifier"]  # 6 synthetic classes
    assert model_from_checkpoint(result.last_checkpoint)[1]["input_convention"] == CAFFE_BGR
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert start["init"]["kind"] == "deeplab-init"
