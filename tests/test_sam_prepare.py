"""`pipseg prepare --pseudo sam` on VOC, COCO and YOLO box-only datasets, with a tiny SAM of the
official design (random weights) saved as a checkpoint and read through the same path as a real
one; the bad inputs; training on the result. Oracles: the boxes as generated (not as pipseg read
them), the crf labels prepare wrote, files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sam import check_boxes_respected, tiny_sam
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.data.labels import read_label
from pipseg.data.manifest import load_manifest
from pipseg.data.prepare import prepare_dataset
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc, render_sample
from pipseg.engine import train
from pipseg.labels import sam
from pipseg.labels.sam import SamLabeller, SamSource, load_sam

runner = CliRunner()
SIZE, N, SEED = (64, 48), 6, 3
OBJECTS = SYNTHETIC_CLASSES[1:]
CROWD = [40, 2, 59, 11]  # inclusive x0, y0, x1, y1 of a COCO crowd region on every image


def _boxes(i: int) -> np.ndarray:
    return render_sample(SEED, i, SIZE)[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated dataset as a VOC folder (with masks) and as box-only COCO JSON (with a crowd
    region) and YOLO text, written here from the generator's boxes."""
    base = tmp_path_factory.mktemp("samdata")
    make_synthetic_voc(base / "VOC", n_train=N, n_val=0, image_size=SIZE, seed=SEED)
    (base / "classes.txt").write_text("\n".join(OBJECTS) + "\n")
    images, anns = [], []
    (base / "yolo").mkdir()
    w, h = SIZE
    for i in range(N):
        images.append({"id": i + 1, "file_name": f"syn_{i:05d}.jpg", "width": w, "height": h})
        lines = []
        for x0, y0, x1, y1, c in _boxes(i).tolist():
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "iscrowd": 0,
                         "bbox": [x0, y0, x1 + 1 - x0, y1 + 1 - y0], "area": 1.0})  # fmt: skip
            lines.append(f"{c - 1} {(x0 + x1 + 1) / 2 / w} {(y0 + y1 + 1) / 2 / h} "
                         f"{(x1 + 1 - x0) / w} {(y1 + 1 - y0) / h}")  # fmt: skip
        (base / "yolo" / f"syn_{i:05d}.txt").write_text("\n".join(lines) + "\n")
        x0, y0, x1, y1 = CROWD
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 1,
                     "bbox": [x0, y0, x1 + 1 - x0, y1 + 1 - y0], "area": 1.0})  # fmt: skip
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(OBJECTS)]
    doc = {"images": images, "annotations": anns, "categories": categories}
    (base / "boxes.json").write_text(json.dumps(doc))
    return base


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("samckpt") / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def tiny_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--sam-model tiny`` builds the tiny SAM (the official types are far too slow here)."""
    monkeypatch.setitem(sam.SAM_BUILDERS, "tiny", tiny_sam)


def _args(base: Path, fmt: str, out: Path) -> list[str]:
    if fmt == "voc":
        return ["--voc-root", str(base / "VOC"), "--out", str(out), "--val-fraction", "0.34"]
    annotations = {"coco": base / "boxes.json", "yolo": base / "yolo"}[fmt]
    return ["--images", str(base / "VOC/JPEGImages"), "--annotations", str(annotations),
            "--out", str(out), "--val-fraction", "0.34"]  # fmt: skip


def _prepare(base: Path, fmt: str, out: Path, checkpoint: Path, pseudo: str = "crf,sam") -> str:
    result = runner.invoke(app, ["prepare", *_args(base, fmt, out), "--classes",
                                 str(base / "classes.txt"), "--pseudo", pseudo, "--workers", "1",
                                 "--sam-checkpoint", str(checkpoint), "--sam-model", "tiny",
                                 "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_sam_labels_respect_boxes_on_every_format(
    dataset: Path, checkpoint: Path, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "out"
    output = _prepare(dataset, fmt, out, checkpoint)
    manifest = load_manifest(out)
    source = manifest["sources"]["sam"]
    assert source["dirs"] == [{"base": "prepared", "path": "pseudo/sam"}]
    assert source["counts"]["train_aug"] == len((out / "splits/train_aug.txt").read_text().split())
    stats = source["stats"]
    built = [int(i[4:]) for i in (out / "splits/train_aug.txt").read_text().split()]
    assert stats["boxes"] == sum(len(_boxes(i)) for i in built)
    assert stats["fallbacks"] == stats["nearly_empty"] + stats["nearly_full"]
    assert sum(stats["fill_hist"]) == stats["boxes"]
    assert "sam" in output and f"{stats['fallbacks']} of {stats['boxes']} boxes" in " ".join(output.split())
    assert "sam" in manifest["settings"]["pseudo"]
    crowd = np.zeros((SIZE[1], SIZE[0]), bool)
    x0, y0, x1, y1 = CROWD
    crowd[y0 : y1 + 1, x0 : x1 + 1] = True
    for i in built:
        label = read_label(out / "pseudo/sam" / f"syn_{i:05d}.png")
        boxes = _boxes(i)
        if fmt != "coco":
            check_boxes_respected(label, boxes, None)
            continue
        # Crowd: its background is ignore; pixels an object box gave a class keep it.
        in_box = np.zeros_like(crowd)
        for bx0, by0, bx1, by1, _ in boxes.tolist():
            in_box[by0 : by1 + 1, bx0 : bx1 + 1] = True
        assert (label[crowd & ~in_box] == 255).all()
        check_boxes_respected(np.where(crowd & (label == 255), 0, label), boxes, None)
    if fmt == "voc":  # masks exist: scored (on train, which has them), coverage beside it
        assert set(source["miou"]) == {"train"} and 0 <= source["miou"]["train"] <= 1
        assert source["coverage"] == 1.0 and f"{100 * source['miou']['train']:.1f}" in output
    else:
        assert source["miou"] == {} and (source["coverage"] < 1.0) == (fmt == "coco")  # crowd: 255


def test_degenerate_masks_fall_back_to_the_crf_label_and_are_counted(
    dataset: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    model = load_sam(checkpoint, "tiny", "cpu")
    everything_empty = SamSource(SamLabeller(model, min_fill=1.01))  # no mask can fill that much
    report = prepare_dataset(
        dataset / "VOC", out=out, classes=OBJECTS, pseudo=["crf", "sam"], workers=1,
        val_fraction=0.34, models={"sam": everything_empty},
    )  # fmt: skip
    ids = report.splits["train_aug"]
    stats = report.sources["sam"].stats
    boxes = sum(len(_boxes(int(i[4:]))) for i in ids)
    assert stats["boxes"] == stats["fallbacks"] == stats["nearly_empty"] == boxes
    assert any(f"{stats['boxes']} of {stats['boxes']} boxes took the crf label" in n for n in report.notes)
    for i in ids:  # every box painted from the crf label inside it: the crf label again
        np.testing.assert_array_equal(read_label(out / "pseudo/sam" / f"{i}.png"),
                                      read_label(out / "pseudo/crf" / f"{i}.png"))  # fmt: skip


class CountingSource(SamSource):
    seen: list[str]

    def __call__(self, items, out_dir, **kw):  # type: ignore[no-untyped-def]
        todo = [i for i in items if not (out_dir / f"{i.sample_id}.png").is_file()]
        self.seen.extend(i.sample_id for i in todo)
        return super().__call__(items, out_dir, **kw)


def test_rerun_skips_finished_images(dataset: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = CountingSource(SamLabeller(load_sam(checkpoint, "tiny", "cpu")))
    source.seen = []
    kw = {"out": out, "classes": OBJECTS, "pseudo": ["sam"], "workers": 1, "val_fraction": 0.34,
          "models": {"sam": source}}  # fmt: skip
    first = prepare_dataset(dataset / "VOC", **kw)
    built = len(first.splits["train_aug"])
    assert first.sources["sam"].written == built and len(source.seen) == built
    victim = out / "pseudo/sam/syn_00002.png"
    before = victim.read_bytes()
    source.seen.clear()
    assert prepare_dataset(dataset / "VOC", **kw).sources["sam"].written == 0 and source.seen == []
    victim.unlink()
    third = prepare_dataset(dataset / "VOC", **kw)
    assert third.sources["sam"].written == 1 and victim.read_bytes() == before
    assert not list(out.rglob("*.tmp*"))


class NeedsCode:
    pass


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing", "SAM checkpoint not found"),
        ("keys", "not a SAM checkpoint (no key image_encoder.patch_embed.proj.weight"),
        ("code", "a pickle that needs code to load"),
        ("no-checkpoint", "--pseudo sam: needs --sam-checkpoint PATH"),
        ("no-sam", "--sam-checkpoint and --sam-model go with --pseudo sam"),
    ],
)
def test_bad_sam_inputs_exit_2_with_one_line_and_write_nothing(
    dataset: Path, checkpoint: Path, tmp_path: Path, case: str, expect: str
) -> None:
    path = tmp_path / f"{case}.pth"
    if case == "keys":
        torch.save({"encoder.weight": torch.zeros(2)}, path)
    elif case == "code":
        torch.save({"a": NeedsCode()}, path)
    out = tmp_path / "out"
    flags = ["--pseudo", "crf" if case == "no-sam" else "crf,sam"]
    if case == "no-sam":
        flags += ["--sam-checkpoint", str(checkpoint)]
    elif case != "no-checkpoint":
        flags += ["--sam-checkpoint", str(path)]
    result = runner.invoke(app, ["prepare", *_args(dataset, "voc", out), "--classes",
                                 str(dataset / "classes.txt"), *flags, "--workers", "1"])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], result.output
    if case not in ("no-checkpoint", "no-sam"):
        assert str(path) in lines[0]
    assert not out.exists()


def test_training_reads_sam_labels(dataset: Path, checkpoint: Path, tmp_path: Path) -> None:
    from pipseg.config import validate_config

    out = tmp_path / "prepared"
    _prepare(dataset, "voc", out, checkpoint, pseudo="sam")
    cfg = validate_config({
        "data": {"root": str(dataset / "VOC"), "prepared": str(out), "classes": list(SYNTHETIC_CLASSES),
                 "crop_size": 32, "label_source": "sam", "train_split": "train", "workers": 0},
        "model": {"name": "tiny_deeplab", "init": "none"},
        "optim": {"iters": 2, "batch_size": 2, "lr": 0.01},
        "runtime": {"device": "cpu", "out_dir": str(tmp_path / "run"), "log_every": 1, "val_every": 2,
                    "ckpt_every": 2, "val_max_images": 1},
        "eval": {"pad_size": 65},
    })  # fmt: skip
    result = train(cfg)
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["label_source"] == "sam" and ckpt["iteration"] == 2
    assert result is not None
