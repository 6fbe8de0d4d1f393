"""`pipseg prepare`: layout checks, splits with SBD, label conversion, resumability, sanity, mIoU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import DataConfig
from pipseg.data.dataset import SegDataset
from pipseg.data.labels import colorize, read_label, write_label
from pipseg.data.prepare import PrepareError, load_manifest, prepare_dataset
from pipseg.data.pseudo import box_label
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from pipseg.data.voc import read_voc_boxes
from pipseg.errors import PipsegError

runner = CliRunner()
CLASSES = SYNTHETIC_CLASSES


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "VOC"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("pipseg"))
    return dst


def _classes_file(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n")
    return path


def test_prepared_fixture_manifest(prepared_root: Path) -> None:
    manifest = load_manifest(prepared_root / "pipseg")
    assert manifest["classes"] == CLASSES
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {
        "train": 24,
        "val": 8,
        "train_aug": 24,
    }
    assert "no --sbd-root" in manifest["splits"]["train_aug"]["note"]
    assert set(manifest["sources"]) == {"gt", "box"}
    assert manifest["sources"]["gt"]["counts"] == {"train": 24, "val": 8, "train_aug": 24}
    assert manifest["sources"]["box"]["counts"]["train_aug"] == 24
    assert manifest["pipseg_version"] and manifest["created"]
    ids = (prepared_root / "pipseg/splits/train_aug.txt").read_text().split()
    assert ids == (prepared_root / "ImageSets/Segmentation/train.txt").read_text().split()


def test_box_pseudo_labels_are_filled_boxes(prepared_root: Path) -> None:
    for sample_id in ("syn_00000", "syn_00005"):
        ann = read_voc_boxes(prepared_root / "Annotations" / f"{sample_id}.xml", CLASSES)
        label = read_label(prepared_root / "pipseg/pseudo/box" / f"{sample_id}.png")
        # Independent oracle: per pixel, the class of the smallest box containing it.
        expect = np.zeros_like(label)
        best = np.full(label.shape, np.inf)
        for x0, y0, x1, y1, c in ann.boxes.tolist():
            area = (x1 - x0 + 1) * (y1 - y0 + 1)
            region = np.s_[y0 : y1 + 1, x0 : x1 + 1]
            smaller = area < best[region]
            expect[region][smaller] = c
            best[region][smaller] = area
        np.testing.assert_array_equal(label, expect)
        np.testing.assert_array_equal(box_label(ann.boxes, *label.shape), expect)


def _independent_miou(root: Path, kind: str, ids: list[str], num_classes: int) -> float:
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for i in ids:
        gt = np.array(Image.open(root / "SegmentationClass" / f"{i}.png"))
        pred = np.array(Image.open(root / "pipseg/pseudo" / kind / f"{i}.png"))
        valid = gt != 255
        for c in range(num_classes):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    return float((inter[union > 0] / union[union > 0]).mean())


def test_cli_prepare_table_pseudo_miou_and_resume(synthetic_root: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_root, tmp_path)
    args = ["prepare", "--voc-root", str(root), "--pseudo", "box,grabcut,crf", "--workers", "2",
            "--classes", str(_classes_file(tmp_path))]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for word in ("gt", "box", "grabcut", "crf", "train_aug", "mIoU", "no --sbd-root"):
        assert word in result.output
    manifest = load_manifest(root / "pipseg")
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    mious = {}
    for kind in ("box", "grabcut", "crf"):
        reported = manifest["sources"][kind]["miou"]["train"]
        mious[kind] = reported
        assert reported == pytest.approx(
            _independent_miou(root, kind, train, len(CLASSES)), abs=1e-9
        )
        assert f"{100 * reported:.1f}" in result.output
    assert (
        mious["grabcut"] > mious["box"] and mious["crf"] > mious["box"]
    )  # shapes don't fill boxes

    # Resume: nothing new; a deleted file is rebuilt with the same bytes.
    victim = root / "pipseg/pseudo/grabcut/syn_00003.png"
    before = victim.read_bytes()
    again = prepare_dataset(root, pseudo=["box", "grabcut", "crf"], classes=CLASSES, workers=1)
    assert again.written == 0
    victim.unlink()
    third = prepare_dataset(root, pseudo=["box", "grabcut", "crf"], classes=CLASSES, workers=1)
    assert third.written == 1 and third.sources["grabcut"].written == 1
    assert victim.read_bytes() == before


def test_cli_missing_files_exit_2_and_no_manifest(synthetic_root: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_root, tmp_path)
    gone = [f"syn_{i:05d}" for i in (1, 3, 5, 7, 9, 11, 13)]
    for i in gone[:2]:
        (root / "JPEGImages" / f"{i}.jpg").unlink()
    for i in gone[2:]:
        (root / "Annotations" / f"{i}.xml").unlink()
    (root / "SegmentationClass" / "syn_00030.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "prepare",
            "--voc-root",
            str(root),
            "--out",
            str(out),
            "--classes",
            str(_classes_file(tmp_path)),
        ],
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # undo rich line wrapping
    assert "7 missing or corrupt files" in text and "(+2 more)" in text
    assert "syn_00001.jpg: image not found" in text and "syn_00007.xml" in text
    assert not (out / "manifest.json").exists()

    (root / "SegmentationClass" / "syn_00030.png").unlink()
    result = runner.invoke(app, ["prepare", "--voc-root", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "dataset folder not found" in result.output


def test_layout_check_names_missing_folders(synthetic_root: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_root, tmp_path)
    shutil.rmtree(root / "Annotations")
    with pytest.raises(PipsegError, match="missing Annotations"):
        prepare_dataset(root, classes=CLASSES)
    with pytest.raises(PipsegError, match="unknown kind"):
        prepare_dataset(synthetic_root, pseudo=["boxes"], classes=CLASSES)


def _make_fake_sbd(tmp_path: Path) -> tuple[Path, Path]:
    """VOC ids 0..13: VOC train 0..5, val 10..13; ids 6..9 only in SBD (no VOC GT)."""
    root = make_synthetic_voc(tmp_path / "VOC", n_train=10, n_val=4, image_size=(48, 40), seed=2)
    ids = [f"syn_{i:05d}" for i in range(14)]
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:6]) + "\n")
    dataset = tmp_path / "SBD" / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    for i in ids[6:10] + [ids[2], ids[10]]:
        seg = read_label(root / "SegmentationClass" / f"{i}.png")
        seg[seg == 255] = 0  # SBD has no ignore band
        savemat(
            dataset / "cls" / f"{i}.mat",
            {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}},
        )
    for i in ids[6:10]:
        (root / "SegmentationClass" / f"{i}.png").unlink()
    (dataset / "train.txt").write_text("\n".join([ids[6], ids[7], ids[2]]) + "\n")
    (dataset / "val.txt").write_text("\n".join([ids[8], ids[9], ids[10]]) + "\n")
    return root, tmp_path / "SBD"


def test_train_aug_with_sbd(tmp_path: Path) -> None:
    root, sbd = _make_fake_sbd(tmp_path)
    report = prepare_dataset(root, sbd_root=sbd, pseudo=["box"], classes=CLASSES, workers=1)
    voc_train = set((root / "ImageSets/Segmentation/train.txt").read_text().split())
    voc_val = set((root / "ImageSets/Segmentation/val.txt").read_text().split())
    sbd_ids = set((sbd / "benchmark_RELEASE/dataset/train.txt").read_text().split())
    sbd_ids |= set((sbd / "benchmark_RELEASE/dataset/val.txt").read_text().split())
    expect = (sbd_ids | voc_train) - voc_val
    assert set(report.splits["train_aug"]) == expect == {f"syn_{i:05d}" for i in range(10)}
    manifest = load_manifest(root / "pipseg")
    assert (
        manifest["splits"]["train_aug"]["count"] == 10
        and "note" not in manifest["splits"]["train_aug"]
    )
    assert manifest["sources"]["gt"]["counts"]["train_aug"] == 10
    # Only SBD ids without VOC GT are converted; they match the labels they came from.
    converted = sorted(p.stem for p in (root / "pipseg/SegmentationClassAug").glob("*.png"))
    assert converted == [f"syn_{i:05d}" for i in range(6, 10)]
    cfg = DataConfig(root=root, classes=list(CLASSES), crop_size=32)
    ds = SegDataset(cfg, "train_aug", "gt", train=False)
    item = ds[ds.ids.index("syn_00007")]
    assert item["label"].shape == (40, 48) and set(item["label"].unique().tolist()) <= set(range(6))
    assert (item["label"] > 0).any()


def test_wssl_rgb_and_sdi_conversion(prepared_root: Path, tmp_path: Path) -> None:
    root = _copy(prepared_root, tmp_path)
    wssl, sdi = tmp_path / "wssl", tmp_path / "sdi"
    wssl.mkdir(), sdi.mkdir()
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    for i in train:
        gt = read_label(root / "SegmentationClass" / f"{i}.png")
        Image.fromarray(colorize(gt)).save(wssl / f"{i}.png")  # RGB-coloured, as WSSL ships
        Image.fromarray(gt, mode="L").save(sdi / f"{i}.png")
    report = prepare_dataset(root, wssl=wssl, sdi=sdi, classes=CLASSES, workers=1)
    assert (
        report.sources["wssl"].written == len(train) and report.sources["wssl"].miou["train"] == 1.0
    )
    for i in train[:3]:
        expect = read_label(root / "SegmentationClass" / f"{i}.png")
        out = root / "pipseg/labels/wssl" / f"{i}.png"
        with Image.open(out) as img:
            assert img.mode == "P"
        np.testing.assert_array_equal(read_label(out), expect)
        np.testing.assert_array_equal(read_label(root / "pipseg/labels/sdi" / f"{i}.png"), expect)
    manifest = json.loads((root / "pipseg/manifest.json").read_text())
    assert manifest["sources"]["sdi"]["dirs"] == [{"base": "prepared", "path": "labels/sdi"}]
    cfg = DataConfig(root=root, classes=list(CLASSES), crop_size=32)
    assert len(SegDataset(cfg, "train_aug", "wssl", train=True)) == len(train)


@pytest.mark.parametrize(
    "case, match",
    [
        ("binary", r"--sdi: 24 of 24 label maps hold only 0 and 255 \(first: syn_00000\.png\): binary masks"),
        ("size", r"syn_00004\.png: label is 10x12, image is 96x72"),
        ("indices", r"syn_00004\.png: values \[\d+.*\] are not class ids"),
        ("missing", r"sdi lacks 1 label maps \(first: syn_00004\)"),
    ],
)
def test_label_sanity_errors(prepared_root: Path, tmp_path: Path, case: str, match: str) -> None:
    root = _copy(prepared_root, tmp_path)
    sdi = tmp_path / "sdi"
    sdi.mkdir()
    for i in (root / "ImageSets/Segmentation/train.txt").read_text().split():
        shutil.copy(root / "SegmentationClass" / f"{i}.png", sdi / f"{i}.png")
    bad = sdi / "syn_00004.png"
    gt = read_label(bad)
    if case == "binary":  # a folder of binary masks: every map 0 and 255
        for path in sdi.glob("*.png"):
            write_label(path, np.where(read_label(path) > 0, 255, 0).astype(np.uint8))
    elif case == "size":
        write_label(bad, np.zeros((12, 10), np.uint8))
    elif case == "indices":
        Image.fromarray(colorize(gt)[..., 0]).save(bad)  # one channel of an RGB map
    else:
        bad.unlink()
    with pytest.raises(PrepareError, match=match) as info:
        prepare_dataset(root, sdi=sdi, classes=CLASSES, out=tmp_path / "out", workers=1)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert "sdi" in info.value.report.sources


def test_discover_sources_finds_the_download_layout(tmp_path):
    from pipseg.data.prepare import discover_sources

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    voc.mkdir(parents=True)
    assert discover_sources(voc) == {}
    (tmp_path / "benchmark_RELEASE").mkdir()
    (voc / "SegmentationClassBboxCRF").mkdir()
    (voc / "VOC12_M&G+").mkdir()
    assert discover_sources(voc) == {
        "sbd_root": tmp_path,
        "wssl": voc / "SegmentationClassBboxCRF",
        "sdi": voc / "VOC12_M&G+",
    }
