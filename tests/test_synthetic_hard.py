"""The hard synthetic dataset: deterministic, boxes tight around the visible objects, every
object pixel inside a box of its class, a VOC layout that `prepare` reads."""

import hashlib
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from pipseg.data import synthetic_hard  # noqa: E402
from pipseg.data.labels import read_label  # noqa: E402
from pipseg.data.synthetic_hard import HARD_CLASSES, make_hard_voc, render_hard_instances  # noqa: E402
from pipseg.errors import PipsegError  # noqa: E402

SIZE = (64, 48)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }  # fmt: skip


def test_same_arguments_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = make_hard_voc(tmp_path / "a", n_train=4, n_val=2, image_size=SIZE, seed=5)
    b = make_hard_voc(tmp_path / "b", n_train=4, n_val=2, image_size=SIZE, seed=5)
    c = make_hard_voc(tmp_path / "c", n_train=4, n_val=2, image_size=SIZE, seed=6)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert len(da) == 6 * 3 + 3 and da == db
    images = [k for k in da if k.startswith("JPEGImages/")]
    assert all(da[k] != dc[k] for k in images)


@pytest.mark.parametrize("index", range(12))
def test_boxes_are_tight_and_hold_every_object_pixel(index: int) -> None:
    image, label, boxes, visible = render_hard_instances(3, index, SIZE)
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= set(range(len(HARD_CLASSES))) | {255}
    assert len(boxes) == len(visible)
    for (x0, y0, x1, y1, cls), mask in zip(boxes.tolist(), visible, strict=True):
        assert 1 <= cls < len(HARD_CLASSES)
        rows, cols = (
            [y for y in range(SIZE[1]) if mask[y].any()],
            [x for x in range(SIZE[0]) if mask[:, x].any()],
        )
        assert (min(cols), min(rows), max(cols), max(rows)) == (x0, y0, x1, y1)
        # The label map agrees: each box edge touches its class or the ignore band.
        for edge in (
            label[y0, x0 : x1 + 1],
            label[y1, x0 : x1 + 1],
            label[y0 : y1 + 1, x0],
            label[y0 : y1 + 1, x1],
        ):
            assert np.isin(edge, [cls, 255]).any()
    for y, x in zip(*np.nonzero((label > 0) & (label < 255)), strict=True):
        c = label[y, x]
        assert any(b[4] == c and b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes.tolist()), (
            y,
            x,
            c,
        )


def test_voc_files_agree_with_the_rendered_sample(tmp_path: Path) -> None:
    root = make_hard_voc(tmp_path, n_train=3, n_val=1, image_size=SIZE, seed=2)
    for i in range(4):
        _, label, boxes, _ = render_hard_instances(2, i, SIZE)
        np.testing.assert_array_equal(
            read_label(root / "SegmentationClass" / f"syn_{i:05d}.png"), label
        )
        objects = ET.parse(root / "Annotations" / f"syn_{i:05d}.xml").getroot().iter("object")
        written = [
            [int(o.find(f"bndbox/{k}").text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
            + [HARD_CLASSES.index(o.find("name").text)]
            for o in objects
        ]
        assert written == boxes.tolist()
    assert (root / "ImageSets/Segmentation/val.txt").read_text() == "syn_00003\n"


def test_missing_scikit_image_names_the_dev_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic_hard._sample_images.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    try:
        with pytest.raises(PipsegError, match=r"dev extra"):
            render_hard_instances(0, 0, SIZE)
    finally:
        synthetic_hard._sample_images.cache_clear()
