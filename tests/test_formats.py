"""Box formats in: COCO JSON and YOLO written by a third-party converter (globox), VOC XML;
COCO masks against pycocotools; box-only datasets end to end; every bad input named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from globox import Annotation, AnnotationSet, BoundingBox
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.data.annotations import load_class_names
from pipseg.data.dataset import SegDataset
from pipseg.data.images import read_image
from pipseg.data.labels import read_label
from pipseg.data.manifest import load_manifest
from pipseg.data.prepare import PrepareError, prepare_dataset
from pipseg.data.pseudo import box_label
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc, render_sample
from pipseg.errors import PipsegError

runner = CliRunner()
SIZE, N, SEED = (64, 48), 8, 4
OBJECTS = SYNTHETIC_CLASSES[1:]
COCO_IDS = {name: 10 * (len(OBJECTS) - k) + 7 for k, name in enumerate(OBJECTS)}  # descending, gaps


def _ids() -> list[str]:
    return [f"syn_{i:05d}" for i in range(N)]


def _globox_set(root: Path) -> AnnotationSet:
    """The synthetic boxes as a globox set: pixel edges [x0, x1 + 1), as detection tools keep them."""
    annotations = []
    for i, sample_id in enumerate(_ids()):
        _, _, boxes = render_sample(SEED, i, SIZE)
        annotations.append(Annotation(f"{sample_id}.jpg", image_size=SIZE, boxes=[
            BoundingBox(label=SYNTHETIC_CLASSES[c], xmin=x0, ymin=y0, xmax=x1 + 1, ymax=y1 + 1)
            for x0, y0, x1, y1, c in boxes.tolist()
        ]))  # fmt: skip
    return AnnotationSet(annotations)


@pytest.fixture(scope="module")
def three_formats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset as VOC XML (pipseg's writer), COCO JSON and YOLO text (globox's writers)."""
    base = tmp_path_factory.mktemp("formats")
    root = make_synthetic_voc(base / "VOC", n_train=N, n_val=0, image_size=SIZE, seed=SEED)
    boxes = _globox_set(root)
    boxes.save_coco(base / "boxes.json", label_to_id=COCO_IDS,
                    imageid_to_id={f"{i}.jpg": 100 + k for k, i in enumerate(_ids())})  # fmt: skip
    boxes.save_yolo_darknet(base / "yolo", label_to_id={n: k for k, n in enumerate(OBJECTS)})
    (base / "classes.txt").write_text("\n".join(OBJECTS) + "\n")
    return base


def _prepare(base: Path, fmt: str, out: Path, pseudo: str = "box") -> object:
    args = {"voc": base / "VOC/Annotations", "coco": base / "boxes.json", "yolo": base / "yolo"}[fmt]
    result = runner.invoke(app, [
        "prepare", "--images", str(base / "VOC/JPEGImages"), "--annotations", str(args),
        "--masks", str(base / "VOC/SegmentationClass"), "--classes", str(base / "classes.txt"),
        "--out", str(out), "--pseudo", pseudo, "--workers", "1", "--val-fraction", "0.25",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def test_coco_yolo_voc_give_identical_boxes_and_box_labels(three_formats: Path, tmp_path: Path) -> None:
    outputs = {}
    for fmt in ("voc", "coco", "yolo"):
        out = tmp_path / fmt
        _prepare(three_formats, fmt, out)
        manifest = load_manifest(out)
        assert manifest["source_format"] == fmt and manifest["classes"] == SYNTHETIC_CLASSES
        outputs[fmt] = out
    docs = {f: json.loads((o / "annotations.json").read_text())["images"] for f, o in outputs.items()}
    for i, sample_id in enumerate(_ids()):
        _, _, expect = render_sample(SEED, i, SIZE)  # the generator's own boxes are the oracle
        for fmt in docs:
            np.testing.assert_array_equal(np.array(docs[fmt][sample_id]["boxes"]).reshape(-1, 5), expect)
    splits = {f: (o / "splits/val.txt").read_text() for f, o in outputs.items()}
    assert splits["voc"] == splits["coco"] == splits["yolo"]
    for sample_id in (Path(o).stem for o in (outputs["voc"] / "pseudo/box").glob("*.png")):
        labels = [read_label(o / "pseudo/box" / f"{sample_id}.png") for o in outputs.values()]
        np.testing.assert_array_equal(labels[0], labels[1])
        np.testing.assert_array_equal(labels[0], labels[2])


def test_coco_categories_by_id_without_classes_and_by_name_with(three_formats: Path, tmp_path: Path) -> None:
    images = three_formats / "VOC/JPEGImages"
    plain = prepare_dataset(images=images, annotations=three_formats / "boxes.json",
                            out=tmp_path / "a", workers=1)  # fmt: skip
    by_id = ["background", *sorted(OBJECTS, key=COCO_IDS.get)]
    assert plain.classes == by_id and by_id != SYNTHETIC_CLASSES
    named = prepare_dataset(images=images, annotations=three_formats / "boxes.json",
                            out=tmp_path / "b", workers=1, classes=list(OBJECTS))  # fmt: skip
    assert named.classes == SYNTHETIC_CLASSES
    a = json.loads((tmp_path / "a/annotations.json").read_text())["images"]["syn_00001"]["boxes"]
    b = json.loads((tmp_path / "b/annotations.json").read_text())["images"]["syn_00001"]["boxes"]
    assert [by_id[r[4]] for r in a] == [SYNTHETIC_CLASSES[r[4]] for r in b]


def test_class_files_yaml_list_dict_and_text(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("path: x\nnames: [cat, dog]\n")
    (tmp_path / "dict.yaml").write_text("names:\n  1: dog\n  0: cat\n")
    (tmp_path / "c.txt").write_text("# mine\ncat\n\ndog\n")
    for name in ("list.yaml", "dict.yaml", "c.txt"):
        assert load_class_names(tmp_path / name) == ["cat", "dog"]
    (tmp_path / "gap.yaml").write_text("names: {0: cat, 2: dog}\n")
    with pytest.raises(PipsegError, match=r"gap\.yaml: 'names' must number"):
        load_class_names(tmp_path / "gap.yaml")


def _coco_with_polygons(root: Path, path: Path) -> None:
    """COCO instances with polygon segmentations traced from the synthetic objects, a crowd RLE
    and an image without objects."""
    from pycocotools import mask as mask_utils

    images, anns = [], []
    for k, sample_id in enumerate(_ids()[:4]):
        _, label, boxes = render_sample(SEED, k, SIZE)
        images.append({"id": k + 1, "file_name": f"{sample_id}.jpg", "width": SIZE[0], "height": SIZE[1]})
        for x0, y0, x1, y1, c in boxes.tolist():
            inside = np.zeros_like(label)
            inside[y0 : y1 + 1, x0 : x1 + 1] = label[y0 : y1 + 1, x0 : x1 + 1] == c
            contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            polygons = [c_.reshape(-1).astype(float).tolist() for c_ in contours if len(c_) >= 3]
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": COCO_IDS[SYNTHETIC_CLASSES[c]],
                         "bbox": [x0, y0, x1 + 1 - x0, y1 + 1 - y0], "iscrowd": 0, "segmentation": polygons})  # fmt: skip
    crowd = np.zeros((SIZE[1], SIZE[0]), np.uint8, order="F")
    crowd[2:12, 40:60] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode()
    for k in range(4):
        anns.append({"id": 900 + k, "image_id": k + 1, "category_id": COCO_IDS["disc"],
                     "bbox": [40, 2, 20, 10], "iscrowd": 1, "segmentation": rle})  # fmt: skip
    categories = [{"id": i, "name": n} for n, i in COCO_IDS.items()]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))


def test_coco_polygons_and_crowd_become_masks_and_ignore(three_formats: Path, tmp_path: Path) -> None:
    ann_file = tmp_path / "instances.json"
    _coco_with_polygons(three_formats / "VOC", ann_file)
    out = tmp_path / "out"
    report = prepare_dataset(images=three_formats / "VOC/JPEGImages", annotations=ann_file, out=out,
                             classes=list(OBJECTS), pseudo=["box"], workers=1, val_fraction=0.5)  # fmt: skip
    assert report.crowd == 4 and report.sources["gt"].counts["val"] == 2
    coco = COCO(str(ann_file))  # pycocotools decodes the oracle masks
    for img in coco.dataImgs.values() if hasattr(coco, "dataImgs") else coco.imgs.values():
        expect = np.zeros((img["height"], img["width"]), np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        objects = sorted((a for a in anns if not a["iscrowd"]), key=lambda a: -int(coco.annToMask(a).sum()))
        for a in objects:
            expect[coco.annToMask(a) > 0] = OBJECTS.index(coco.cats[a["category_id"]]["name"]) + 1
        for a in (a for a in anns if a["iscrowd"]):
            expect[(coco.annToMask(a) > 0) & (expect == 0)] = 255
        sample_id = Path(img["file_name"]).stem
        np.testing.assert_array_equal(read_label(out / "masks" / f"{sample_id}.png"), expect)
    # The crowd box is ignore in the box pseudo label wherever no object box is.
    for sample_id in (out / "splits/train.txt").read_text().split():
        doc = json.loads((out / "annotations.json").read_text())["images"][sample_id]
        assert doc["crowd"] == [[40, 2, 59, 11]] and all(b[4] != 255 for b in doc["boxes"])
        pseudo = read_label(out / "pseudo/box" / f"{sample_id}.png")
        plain = box_label(np.array(doc["boxes"]).reshape(-1, 5), SIZE[1], SIZE[0])
        region = np.zeros_like(plain, bool)
        region[2:12, 40:60] = True
        ignore = region & (plain == 0)
        assert ignore.any()
        np.testing.assert_array_equal(pseudo[ignore], 255)
        np.testing.assert_array_equal(pseudo[~ignore], plain[~ignore])


# ---------------------------------------------------------------------------- box-only datasets


@pytest.mark.parametrize("masks", ["val", "none"])
def test_box_only_prepare_end_to_end(tmp_path: Path, masks: str) -> None:
    """No ImageSets, PNG images, masks only on val (or none): prepare with all pseudo kinds, then
    read it with a config that names no classes."""
    root = make_synthetic_voc(tmp_path / "mine", n_train=6, n_val=3, image_size=(48, 40), seed=1,
                              image_ext=".png", masks=masks, split_lists=False)  # fmt: skip
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(OBJECTS) + "\n")
    result = runner.invoke(app, ["prepare", "--voc-root", str(root), "--classes", str(classes),
                                 "--pseudo", "box,grabcut,crf", "--workers", "1", "--val-fraction", "1.0"
                                 if masks == "val" else "0.3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = load_manifest(root / "pipseg")
    val = (root / "pipseg/splits/val.txt").read_text().split()
    if masks == "val":
        assert val == ["syn_00006", "syn_00007", "syn_00008"]  # every image with a mask
        assert set(manifest["sources"]["box"]["miou"]) == {"val"}  # scored where masks are
    else:
        assert len(val) == 3 and "no masks" in manifest["split_rule"]
        assert manifest["sources"]["gt"]["counts"] == {"train": 0, "val": 0, "train_aug": 0}
    assert "seed 0" in result.output.replace("\n", " ")
    cfg = SimpleNamespace(box_geometry="exact", prepared_dir=root / "pipseg", root=None, classes=None, crop_size=32,
                          scales=[1.0], flip=False)  # fmt: skip
    train = SegDataset(cfg, "train_aug", "crf", train=True)  # type: ignore[arg-type]
    assert train.classes == SYNTHETIC_CLASSES and len(train) == 9 - len(val)
    assert train[0]["image"].shape == (3, 32, 32)
    gt = SegDataset(cfg, "val", "gt", train=False)  # type: ignore[arg-type]
    assert len(gt) == (3 if masks == "val" else 0) and len(gt.unlabelled) == 3 - len(gt)
    if len(gt):
        image, label, _ = gt.load(0)
        np.testing.assert_array_equal(image, np.asarray(Image.open(root / f"JPEGImages/{gt.ids[0]}.png").convert("RGB")))
        np.testing.assert_array_equal(label, read_label(root / f"SegmentationClass/{gt.ids[0]}.png"))


def test_images_of_any_extension_and_case(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path / "v", n_train=4, n_val=2, image_size=(40, 32), seed=2)
    for k, ext in enumerate([".PNG", ".bmp", ".webp", ".JPEG"]):
        old = root / "JPEGImages" / f"syn_{k:05d}.jpg"
        Image.open(old).save(old.with_suffix(ext), format={".PNG": "PNG", ".bmp": "BMP",
                             ".webp": "WEBP", ".JPEG": "JPEG"}[ext], **({"lossless": True} if ext == ".webp" else {}))  # fmt: skip
        old.unlink()
    report = prepare_dataset(root, classes=SYNTHETIC_CLASSES, pseudo=["box"], workers=1)
    assert report.images == 6
    cfg = SimpleNamespace(box_geometry="exact", prepared_dir=root / "pipseg", root=root, classes=list(SYNTHETIC_CLASSES),
                          crop_size=16, scales=[1.0], flip=False)  # fmt: skip
    ds = SegDataset(cfg, "train", "box", train=False)  # type: ignore[arg-type]
    for k in range(4):
        path = ds.images[k].path
        assert path.suffix in (".PNG", ".bmp", ".webp", ".JPEG")
        np.testing.assert_array_equal(ds.load(k)[0], np.asarray(Image.open(path).convert("RGB")))


def test_one_decoder_for_jpeg_and_other_files(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    pil = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")).astype(int)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - pil).max() <= 2
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PipsegError, match=r"bad\.jpg: not a readable image"):
        read_image(tmp_path / "bad.jpg")


# --------------------------------------------------------------------------------- bad inputs


def _voc(tmp_path: Path, n: int = 8) -> Path:
    return make_synthetic_voc(tmp_path / "VOC", n_train=n, n_val=2, image_size=(40, 32), seed=3)


def _obj(name: str, x0: int, y0: int, x1: int, y1: int) -> str:
    return (f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")  # fmt: skip


def _set_objects(xml: Path, objects: str) -> None:
    text = xml.read_text()
    head = text[: text.index("<object>")] if "<object>" in text else text[: text.index("</annotation>")]
    xml.write_text(head + objects + "</annotation>\n")


def _cli(args: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, ["prepare", "--workers", "1", *args])
    return result.exit_code, " ".join(result.output.split())


def test_boxes_past_the_edge_are_clipped_and_empty_ones_skipped(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    classes = tmp_path / "c.txt"
    classes.write_text("\n".join(SYNTHETIC_CLASSES))
    for k in range(7):  # seven offending objects: the first five are shown, then a count
        _set_objects(root / f"Annotations/syn_{k:05d}.xml", _obj("disc", 30, 5, 60, 20) + _obj("ring", 3, 3, 9, 9))
    _set_objects(root / "Annotations/syn_00007.xml", _obj("ring", 9, 9, 3, 20) + _obj("cross", 2, 2, 6, 6))
    code, text = _cli(["--voc-root", str(root), "--classes", str(classes), "--pseudo", "box"])
    assert code == 0, text
    assert "7 boxes past the image edge clipped" in text and "(+2 more)" in text
    assert "syn_00000.xml: object 0 ('disc')" in text
    assert "1 empty, inverted or outside boxes skipped" in text and "syn_00007.xml: object 0" in text
    doc = json.loads((root / "pipseg/annotations.json").read_text())["images"]
    assert doc["syn_00000"]["boxes"] == [[29, 4, 39, 19, 1], [2, 2, 8, 8, 2]]  # clipped to x <= 39
    assert doc["syn_00007"]["boxes"] == [[1, 1, 5, 5, 4]]
    assert load_manifest(root / "pipseg")["objects"]["clipped"] == 7

    shutil.rmtree(root / "pipseg")
    code, text = _cli(["--voc-root", str(root), "--classes", str(classes), "--strict-boxes"])
    assert code == 2 and "8 bad boxes" in text and "--strict-boxes" in text
    assert not (root / "pipseg/manifest.json").exists()


@pytest.mark.parametrize("case", ["missing image", "unknown image id", "unknown category", "no images",
                                  "not coco", "bad bbox"])
def test_bad_coco_files_exit_2_naming_the_file(three_formats: Path, tmp_path: Path, case: str) -> None:
    doc = json.loads((three_formats / "boxes.json").read_text())
    expect = "boxes.json"
    if case == "missing image":
        doc["images"][2]["file_name"] = "gone.jpg"
        expect = "gone.jpg: image not found"
    elif case == "unknown image id":
        doc["annotations"][0]["image_id"] = 4242
        expect = "to image id 4242, which 'images' does not list"
    elif case == "unknown category":
        doc["annotations"][1]["category_id"] = 5
        expect = "category id 5 is not listed"
    elif case == "no images":
        doc["images"] = []
        expect = "boxes.json: the annotation file lists no images"
    elif case == "not coco":
        doc = {"images": []}
        expect = "boxes.json: not a COCO instances file"
    else:
        doc["annotations"][0]["bbox"] = [1, 2]
        expect = "'bbox' must be four numbers"
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "out"
    code, text = _cli(["--images", str(three_formats / "VOC/JPEGImages"), "--annotations", str(path),
                       "--out", str(out)])  # fmt: skip
    assert code == 2 and expect in text, text
    assert not (out / "manifest.json").exists()
    error = [line for line in text.split("error:")][-1]
    assert len(error) < 600


def test_yolo_unknown_class_malformed_line_and_orphan_label(three_formats: Path, tmp_path: Path) -> None:
    yolo = tmp_path / "yolo"
    shutil.copytree(three_formats / "yolo", yolo)
    (yolo / "syn_00002.txt").write_text("7 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    (yolo / "syn_00003.txt").write_text("1 0.5 0.5\n")
    (yolo / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    args = ["--images", str(three_formats / "VOC/JPEGImages"), "--annotations", str(yolo),
            "--out", str(tmp_path / "out"), "--classes", str(three_formats / "classes.txt")]  # fmt: skip
    code, text = _cli(args)
    assert code == 2 and "3 missing or corrupt files" in text
    assert "orphan.txt: no image 'orphan'" in text and "syn_00002.txt: line 1: class 7 has no name" in text
    assert "syn_00003.txt: line 1: expected 'class cx cy w h'" in text
    (yolo / "orphan.txt").unlink()
    (yolo / "syn_00003.txt").write_text("")
    code, text = _cli(args + ["--skip-unknown"])
    assert code == 0 and "1 objects of unknown classes skipped" in text, text


def test_empty_inputs_are_errors(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    (root / "ImageSets/Segmentation/val.txt").write_text("# nothing\n")
    code, text = _cli(["--voc-root", str(root)])
    assert code == 2 and "val.txt: the id list is empty" in text
    (root / "ImageSets/Segmentation/val.txt").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = _cli(["--images", str(root / "JPEGImages"), "--annotations", str(empty),
                       "--format", "voc", "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and f"{empty}: no .xml files" in text
    code, text = _cli(["--images", str(root / "JPEGImages"), "--annotations", str(empty), "--out", "x"])
    assert code == 2 and "cannot tell the format" in text and "--format" in text
    code, text = _cli(["--images", str(root / "JPEGImages"), "--annotations", str(root / "Annotations")])
    assert code == 2 and "--out is required" in text


def test_val_fraction_split_is_seeded_and_from_masked_images(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path / "v", n_train=10, n_val=6, image_size=(32, 24), seed=5,
                              masks="val", split_lists=False)  # fmt: skip
    masked = {f"syn_{i:05d}" for i in range(10, 16)}
    splits = []
    for seed in (0, 0, 1):
        shutil.rmtree(root / "pipseg", ignore_errors=True)
        report = prepare_dataset(root, classes=SYNTHETIC_CLASSES, val_fraction=0.5, seed=seed, workers=1)
        assert len(report.splits["val"]) == 3 and set(report.splits["val"]) <= masked
        assert sorted(report.splits["train"] + report.splits["val"]) == sorted(report.splits["train"] + list(
            set(report.splits["val"])))  # fmt: skip
        assert "6 images with masks" in report.split_rule and f"seed {seed}" in report.split_rule
        splits.append(report.splits["val"])
    assert splits[0] == splits[1] and splits[0] != splits[2]
    with pytest.raises(PipsegError, match="--val-fraction 1.0: puts all 2 images in val"):
        prepare_dataset(make_synthetic_voc(tmp_path / "n", 2, 0, (32, 24), masks="none", split_lists=False),
                        classes=SYNTHETIC_CLASSES, val_fraction=1.0, workers=1)  # fmt: skip


def test_no_empty_progress_stage_and_no_sbd_bar(prepared_root: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    prepare_dataset(prepared_root, pseudo=["box"], classes=SYNTHETIC_CLASSES, workers=1,
                    progress=lambda s, d, t: calls.append((s, d, t)))  # fmt: skip
    assert calls and all(t > 0 for _, _, t in calls)
    assert not any("SBD" in s for s, _, _ in calls)


def test_unknown_class_error_names_prepare_flags(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    with pytest.raises(PrepareError, match="not one of the 2 classes of --classes.*--skip-unknown") as info:
        prepare_dataset(root, classes=["disc"], workers=1)
    assert info.value.report.unknown > 0
    assert not (root / "pipseg/manifest.json").exists()


def test_val_annotations_file_matches_categories_by_name(three_formats: Path, tmp_path: Path) -> None:
    doc = json.loads((three_formats / "boxes.json").read_text())
    val_ids = {img["id"] for img in doc["images"][6:]}
    train = {**doc, "images": doc["images"][:6],
             "annotations": [a for a in doc["annotations"] if a["image_id"] not in val_ids]}  # fmt: skip
    renumber = {c["id"]: 500 - c["id"] for c in doc["categories"]}  # other ids, same names
    val = {"images": doc["images"][6:],
           "categories": [{**c, "id": renumber[c["id"]]} for c in doc["categories"]],
           "annotations": [{**a, "category_id": renumber[a["category_id"]]}
                           for a in doc["annotations"] if a["image_id"] in val_ids]}  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))
    report = prepare_dataset(images=three_formats / "VOC/JPEGImages", annotations=tmp_path / "train.json",
                             val_annotations=tmp_path / "val.json", out=tmp_path / "out",
                             classes=list(OBJECTS), workers=1)  # fmt: skip
    assert report.splits["val"] == ["syn_00006", "syn_00007"] and len(report.splits["train"]) == 6
    assert report.split_rule == "--val-annotations"
    boxes = json.loads((tmp_path / "out/annotations.json").read_text())["images"]
    for i in (0, 7):
        np.testing.assert_array_equal(np.array(boxes[f"syn_{i:05d}"]["boxes"]).reshape(-1, 5),
                                      render_sample(SEED, i, SIZE)[2])  # fmt: skip
    with pytest.raises(PipsegError, match="--val-annotations or --val-fraction, not both"):
        prepare_dataset(images=three_formats / "VOC/JPEGImages", annotations=tmp_path / "train.json",
                        val_annotations=tmp_path / "val.json", out=tmp_path / "o2", val_fraction=0.2)  # fmt: skip


def test_moved_voc_dataset_resolves_through_data_root(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    prepare_dataset(root, classes=SYNTHETIC_CLASSES, pseudo=["box"], workers=1)
    moved = root.rename(tmp_path / "moved")
    cfg = SimpleNamespace(box_geometry="exact", prepared_dir=moved / "pipseg", root=moved, classes=None, crop_size=16,
                          scales=[1.0], flip=False)  # fmt: skip
    ds = SegDataset(cfg, "val", "gt", train=False)  # type: ignore[arg-type]
    assert ds.images[0].path.is_relative_to(moved) and ds.label_paths[0].is_relative_to(moved)
    image, label, _ = ds.load(0)
    assert image.shape[:2] == label.shape == (32, 40)
