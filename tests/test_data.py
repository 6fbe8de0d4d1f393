"""VOC parsing, label reading, the synthetic dataset, augmentation geometry, SegDataset, collate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipseg.config import VOC_CLASSES, DataConfig
from pipseg.data.dataset import SegDataset, collate_batch, collate_list
from pipseg.data.labels import VOC_PALETTE, colorize, read_label, write_label
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc, render_sample
from pipseg.data.transforms import TrainAugment, crop_boxes, flip_boxes
from pipseg.data.voc import read_voc_boxes
from pipseg.errors import PipsegError


def _xml(objects: str, width: int = 100, height: int = 80) -> str:
    return (
        f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        f"{objects}</annotation>"
    )


def _obj(name: str, x0: float, y0: float, x1: float, y1: float, difficult: int = 0) -> str:
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


# --------------------------------------------------------------------------------------- VOC XML


def test_voc_boxes_are_zero_based_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(
        _xml(_obj(" Dog ", 1, 1, 100, 80) + _obj("person", 10, 20.0, 30, 40, difficult=1))
    )
    ann = read_voc_boxes(path, VOC_CLASSES)
    assert (ann.width, ann.height, ann.skipped) == (100, 80, 0)
    assert ann.boxes.dtype == np.int64
    np.testing.assert_array_equal(
        ann.boxes,
        [[0, 0, 99, 79, VOC_CLASSES.index("dog")], [9, 19, 29, 39, VOC_CLASSES.index("person")]],
    )


def test_voc_no_objects_gives_empty_boxes(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(_xml(""))
    assert read_voc_boxes(path, VOC_CLASSES).boxes.shape == (0, 5)


@pytest.mark.parametrize("box", [(0, 1, 10, 10), (1, 1, 101, 10), (5, 5, 4, 10), (1, 1, 10, 81)])
def test_voc_box_out_of_range_names_file_and_object(tmp_path: Path, box: tuple[int, ...]) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(_xml(_obj("cat", 1, 1, 5, 5) + _obj("dog", *box)))
    with pytest.raises(PipsegError, match=r"bad\.xml: object 1 \('dog'\).*outside the 100x80"):
        read_voc_boxes(path, VOC_CLASSES)


def test_voc_unknown_class_error_or_skip(tmp_path: Path) -> None:
    path = tmp_path / "u.xml"
    path.write_text(
        _xml(_obj("cat", 1, 1, 5, 5) + _obj("unicorn", 1, 1, 5, 5) + _obj("dog", 2, 2, 6, 6))
    )
    with pytest.raises(PipsegError, match=r"u\.xml: object 1 \('unicorn'\)"):
        read_voc_boxes(path, VOC_CLASSES)
    ann = read_voc_boxes(path, VOC_CLASSES, skip_unknown=True)
    assert ann.skipped == 1
    np.testing.assert_array_equal(
        ann.boxes[:, 4], [VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")]
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("<annotation><size><width>10</width>", "malformed XML"),
        ("<annotation><object/></annotation>", "<size>"),
        ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><annotation/>', "DOCTYPE"),
        (_xml("<object><name>cat</name></object>"), r"object 0 \('cat'\): <bndbox> is missing"),
        (_xml(_obj("cat", "a", 1, 5, 5)), "not a number"),
    ],
)
def test_voc_malformed(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "m.xml"
    path.write_text(text)
    with pytest.raises(PipsegError, match=match) as info:
        read_voc_boxes(path, VOC_CLASSES)
    assert "m.xml" in str(info.value)


def test_voc_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipsegError, match="not found"):
        read_voc_boxes(tmp_path / "nope.xml", VOC_CLASSES)


# ---------------------------------------------------------------------------------------- labels


def test_read_label_palette_gray_rgb_agree(tmp_path: Path) -> None:
    label = np.random.default_rng(0).integers(0, 21, size=(17, 23)).astype(np.uint8)
    label[3:5] = 255
    write_label(tmp_path / "p.png", label)
    Image.fromarray(label, mode="L").save(tmp_path / "g.png")
    Image.fromarray(colorize(label)).save(tmp_path / "rgb.png")
    with Image.open(tmp_path / "p.png") as img:
        assert img.mode == "P"
        assert np.array_equal(np.array(img.getpalette()[:63]).reshape(-1, 3), VOC_PALETTE[:21])
    for name in ("p.png", "g.png", "rgb.png"):
        np.testing.assert_array_equal(read_label(tmp_path / name), label)


# ------------------------------------------------------------------------------------- synthetic


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_synthetic_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    a = make_synthetic_voc(tmp_path / "a", n_train=5, n_val=3, image_size=(64, 48), seed=3)
    b = make_synthetic_voc(tmp_path / "b", n_train=5, n_val=3, image_size=(64, 48), seed=3)
    files = _tree_bytes(a)
    assert files == _tree_bytes(b)
    assert len([f for f in files if f.startswith("JPEGImages")]) == 8
    assert (a / "ImageSets/Segmentation/train.txt").read_text().split() == [
        f"syn_{i:05d}" for i in range(5)
    ]
    assert len((a / "ImageSets/Segmentation/trainval.txt").read_text().split()) == 8
    mtimes = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    make_synthetic_voc(a, n_train=5, n_val=3, image_size=(64, 48), seed=3)
    assert mtimes == {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    c = make_synthetic_voc(tmp_path / "c", n_train=5, n_val=3, image_size=(64, 48), seed=4)
    assert _tree_bytes(c) != files


def test_synthetic_boxes_are_tight_and_match_xml(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path, n_train=6, n_val=0, image_size=(80, 60), seed=1)
    shapes = set()
    for i in range(6):
        image, label, boxes = render_sample(1, i, (80, 60))
        ann = read_voc_boxes(root / "Annotations" / f"syn_{i:05d}.xml", SYNTHETIC_CLASSES)
        np.testing.assert_array_equal(ann.boxes, boxes)
        np.testing.assert_array_equal(
            read_label(root / "SegmentationClass" / f"syn_{i:05d}.png"), label
        )
        assert image.shape == (60, 80, 3) and label.dtype == np.uint8
        assert set(np.unique(label)) <= set(range(len(SYNTHETIC_CLASSES))) | {255}
        assert (label == 255).any()  # the VOC-style boundary band
        for x0, y0, x1, y1, c in boxes.tolist():
            shapes.add(c)
            inside = label[y0 : y1 + 1, x0 : x1 + 1] == c
            assert inside.any() and inside.mean() < 1.0  # objects fill only part of their box
    assert len(shapes) >= 3


# ---------------------------------------------------------------------------------- augmentation


def _object_id_sample(
    seed: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic sample whose label holds object ids (k + 1) instead of classes, so each box's
    own pixels can be followed through the augmentation; each object lies inside its box."""
    image, label, boxes = render_sample(seed, 0, size)
    ids = np.zeros_like(label)
    for k, (x0, y0, x1, y1, c) in enumerate(boxes.tolist()):
        region = label[y0 : y1 + 1, x0 : x1 + 1]
        ids[y0 : y1 + 1, x0 : x1 + 1][region == c] = k + 1
    boxes = boxes.copy()
    boxes[:, 4] = np.arange(1, len(boxes) + 1)
    return image, ids, boxes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    size=st.tuples(st.integers(20, 90), st.integers(20, 90)),
    crop=st.integers(8, 100),
    scales=st.lists(st.floats(0.3, 2.2), min_size=1, max_size=3),
)
def test_augmentation_keeps_boxes_inside_crop_and_around_their_pixels(
    seed: int, size: tuple[int, int], crop: int, scales: list[float]
) -> None:
    image, ids, boxes = _object_id_sample(seed, size)
    augment = TrainAugment(crop, scales, flip=True, pad_rgb=(1, 2, 3))
    out_image, out_ids, out_boxes = augment(image, ids, boxes, torch.Generator().manual_seed(seed))
    assert out_image.shape == (crop, crop, 3) and out_image.dtype == np.uint8
    assert out_ids.shape == (crop, crop)
    assert np.all(out_boxes[:, 0] >= 0) and np.all(out_boxes[:, 2] < crop)
    assert np.all(out_boxes[:, 1] >= 0) and np.all(out_boxes[:, 3] < crop)
    assert np.all(out_boxes[:, 0] <= out_boxes[:, 2]) and np.all(out_boxes[:, 1] <= out_boxes[:, 3])
    kept = {int(k) for k in out_boxes[:, 4]}
    for k in range(1, len(boxes) + 1):
        ys, xs = np.nonzero(out_ids == k)
        if k not in kept:
            assert len(ys) == 0, "a dropped box still had pixels of its object in the crop"
            continue
        x0, y0, x1, y1, _ = out_boxes[out_boxes[:, 4] == k][0]
        assert np.all((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1))
    # Padding: label 255 and the padding colour exactly where the scaled image ended.
    if (out_ids == 255).any():
        assert np.all(out_image[out_ids == 255] == (1, 2, 3))


def test_flip_is_an_exact_mirror() -> None:
    image, ids, boxes = _object_id_sample(7, (40, 30))
    augment = TrainAugment(crop_size=40, scales=[1.0], flip=True)
    seen = set()
    for seed in range(12):
        out_image, out_ids, out_boxes = augment(
            image, ids, boxes, torch.Generator().manual_seed(seed)
        )
        top = out_ids[:30]  # rows 30..39 are padding
        flipped = not np.array_equal(top, ids)
        seen.add(flipped)
        if flipped:
            np.testing.assert_array_equal(top, ids[:, ::-1])
            np.testing.assert_array_equal(out_image[:30], image[:, ::-1])
            np.testing.assert_array_equal(out_boxes[:, 0], 39 - boxes[:, 2])
            np.testing.assert_array_equal(out_boxes[:, 2], 39 - boxes[:, 0])
            np.testing.assert_array_equal(out_boxes[:, [1, 3, 4]], boxes[:, [1, 3, 4]])
        else:
            np.testing.assert_array_equal(out_boxes, boxes)
    assert seen == {True, False}
    np.testing.assert_array_equal(flip_boxes(np.array([[0, 1, 0, 2, 3]]), 10), [[9, 1, 9, 2, 3]])


def test_crop_drops_boxes_outside_and_clips_the_rest() -> None:
    boxes = np.array(
        [[0, 0, 9, 9, 1], [50, 50, 60, 60, 2], [15, 18, 30, 40, 3], [10, 10, 10, 10, 4]]
    )
    out = crop_boxes(boxes, x=10, y=10, width=20, height=20)
    np.testing.assert_array_equal(out, [[5, 8, 19, 19, 3], [0, 0, 0, 0, 4]])
    assert crop_boxes(boxes[:2], 10, 10, 20, 20).shape == (0, 5)


def test_scale_one_and_crop_of_full_image_is_identity() -> None:
    image, ids, boxes = _object_id_sample(3, (32, 32))
    out = TrainAugment(32, [1.0], flip=False)(image, ids, boxes)
    for a, b in zip(out, (image, ids, boxes), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------- dataset


def test_dataset_train_and_val_items(synthetic_data_cfg: DataConfig) -> None:
    train = SegDataset(synthetic_data_cfg, "train", "box", train=True)
    assert len(train) == 24 and train.num_classes == len(SYNTHETIC_CLASSES)
    torch.manual_seed(0)
    item = train[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert item["label"].dtype == torch.uint8 and item["label"].shape == (64, 64)
    assert item["boxes"].dtype == torch.long and item["boxes"].shape[1] == 5
    assert item["id"] == "syn_00000"
    val = SegDataset(synthetic_data_cfg, "val", "gt", train=False)
    item = val[0]
    assert item["image"].shape == (3, 72, 96) and item["label"].shape == (72, 96)
    root = synthetic_data_cfg.root
    np.testing.assert_array_equal(
        item["label"].numpy(), read_label(root / "SegmentationClass" / f"{item['id']}.png")
    )
    np.testing.assert_array_equal(
        item["boxes"].numpy(),
        read_voc_boxes(root / "Annotations" / f"{item['id']}.xml", SYNTHETIC_CLASSES).boxes,
    )
    rgb = np.asarray(Image.open(root / "JPEGImages" / f"{item['id']}.jpg").convert("RGB"))
    assert (
        np.abs(item["image"].permute(1, 2, 0).numpy().astype(int) - rgb).max() <= 2
    )  # same decode, RGB order


def test_dataset_errors(synthetic_data_cfg: DataConfig, tmp_path: Path) -> None:
    with pytest.raises(PipsegError, match="'crf' was not prepared"):
        SegDataset(synthetic_data_cfg, "train", "crf", train=True)
    with pytest.raises(PipsegError, match="no split 'test'"):
        SegDataset(synthetic_data_cfg, "test", "gt", train=False)
    with pytest.raises(PipsegError, match="classes"):
        SegDataset(
            synthetic_data_cfg.model_copy(update={"classes": list(VOC_CLASSES)}), "val", "gt", False
        )
    with pytest.raises(PipsegError, match="no prepared dataset here"):
        SegDataset(DataConfig(root=tmp_path), "train", "gt", train=True)


def test_dataset_label_size_mismatch_names_file(
    synthetic_data_cfg: DataConfig, tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synthetic_data_cfg.root, root)
    bad = root / "pipseg" / "pseudo" / "box" / "syn_00002.png"
    write_label(bad, np.zeros((10, 10), np.uint8))
    ds = SegDataset(
        synthetic_data_cfg.model_copy(update={"root": root}), "train", "box", train=True
    )
    with pytest.raises(PipsegError, match=r"syn_00002\.png: label is 10x10 but its image is 96x72"):
        ds[2]


def test_collate_pads_boxes_and_allows_none() -> None:
    def sample(n: int, name: str) -> dict:
        return {
            "image": torch.zeros(3, 8, 8, dtype=torch.uint8),
            "label": torch.zeros(8, 8, dtype=torch.long),
            "boxes": torch.arange(n * 5, dtype=torch.long).reshape(n, 5),
            "id": name,
        }

    batch = collate_batch([sample(2, "a"), sample(0, "b"), sample(3, "c")])
    assert batch["image"].shape == (3, 3, 8, 8) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (3, 8, 8) and batch["boxes"].shape == (3, 3, 5)
    assert batch["ids"] == ["a", "b", "c"]
    assert torch.equal(batch["boxes"][0, :2], torch.arange(10).reshape(2, 5))
    assert batch["boxes"][0, 2, 4] == -1 and torch.all(batch["boxes"][1, :, 4] == -1)
    empty = collate_batch([sample(0, "a"), sample(0, "b")])
    assert empty["boxes"].shape == (2, 0, 5) and empty["boxes"].dtype == torch.long
    odd = sample(1, "d")
    odd["image"] = torch.zeros(3, 9, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_batch([sample(1, "a"), odd])
    assert collate_list([odd]) == [odd]


def test_dataloader_workers_are_reproducible(synthetic_data_cfg: DataConfig) -> None:
    ds = SegDataset(synthetic_data_cfg, "train", "box", train=True)

    def first_batch() -> dict:
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=4,
            num_workers=1,
            collate_fn=collate_batch,
            generator=torch.Generator().manual_seed(5),
        )
        return next(iter(loader))

    a, b = first_batch(), first_batch()
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])


def test_label_class_out_of_range_names_the_file(synthetic_data_cfg):
    """A label value >= number of classes must not reach the loss as an index error."""
    import numpy as np

    from pipseg.data.dataset import SegDataset
    from pipseg.data.labels import read_label, write_label

    ds = SegDataset(synthetic_data_cfg, "val", "gt", train=False)
    path = ds.label_paths[0]
    original = read_label(path)
    broken = original.copy()
    broken[0, 0] = len(synthetic_data_cfg.classes)
    write_label(path, broken)
    try:
        with pytest.raises(PipsegError, match=f"{path.name}.*holds class"):
            ds.load(0)
    finally:
        write_label(path, original)
    assert np.array_equal(read_label(path), original)


# ------------------------------------------------------------------- common annotation form


def test_box_cleaner_rounds_edges_clips_and_skips() -> None:
    from pipseg.data.annotations import BoxCleaner

    clipped, skipped = [], []
    cleaner = BoxCleaner(clipped, skipped)
    cleaner.add("a", 1, (3, 4, 6, 9), 10, 10)  # pixels 3..5 x 4..8
    cleaner.add("b", 2, (2.6, 0.4, 7.4, 3.6), 10, 10)  # rounds to edges 3, 0, 7, 4
    cleaner.add("c", 3, (-5, 8, 12, 14), 10, 10)  # past the edge: clipped
    cleaner.add("d", 4, (5, 5, 5, 9), 10, 10)  # empty
    cleaner.add("e", 5, (12, 1, 15, 3), 10, 10)  # wholly outside
    np.testing.assert_array_equal(
        cleaner.boxes(), [[3, 4, 5, 8, 1], [3, 0, 6, 3, 2], [0, 8, 9, 9, 3]]
    )
    assert [c.split(" ")[0] for c in clipped] == ["c"]
    assert [s.split(" ")[0] for s in skipped] == ["d", "e"]
    assert "empty or inverted" in skipped[0] and "outside the 10x10 image" in skipped[1]
    assert cleaner.boxes().shape == (0, 5)


def test_index_images_any_extension_and_duplicates(tmp_path: Path) -> None:
    from pipseg.data.images import index_images

    for name in ("a.JPG", "b.png", "c.webp", "c.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found, problems = index_images(tmp_path)
    assert sorted(found) == ["a", "b", "c"] and found["a"].name == "a.JPG"
    assert len(problems) == 1 and "a second image for 'c'" in problems[0]


def test_voc_folder_default_classes(tmp_path: Path) -> None:
    from pipseg.data.voc import read_voc_folder

    (tmp_path / "ann").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "ann/x.xml").write_text(_xml(_obj("Dog", 1, 1, 5, 5) + _obj("cat", 2, 2, 6, 6)))
    (tmp_path / "img/x.png").write_bytes(b"")
    voc = read_voc_folder(tmp_path / "ann", tmp_path / "img", None)
    assert voc.classes == list(VOC_CLASSES) and not voc.problems
    (tmp_path / "ann/y.xml").write_text(_xml(_obj("zebra", 1, 1, 5, 5)))
    (tmp_path / "img/y.png").write_bytes(b"")
    own = read_voc_folder(tmp_path / "ann", tmp_path / "img", None)
    assert own.classes == ["background", "cat", "Dog", "zebra"]
    np.testing.assert_array_equal(own.records["x"].boxes[:, 4], [2, 1])
    named = read_voc_folder(tmp_path / "ann", tmp_path / "img", ["cat"], skip_unknown=True)
    assert named.unknown == 2 and named.records["y"].boxes.shape == (0, 5)
