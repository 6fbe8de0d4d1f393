"""Pictures: what they contain (sizes, legend rows, colours), checked pixel by pixel."""

import numpy as np
import pytest

from pipseg import visualize as viz
from pipseg.data.labels import IGNORE_INDEX, VOC_PALETTE
from pipseg.errors import PipsegError


def _label() -> np.ndarray:
    label = np.zeros((40, 60), np.uint8)
    label[5:20, 5:30] = 1
    label[25:35, 40:55] = 3
    label[38:, :] = IGNORE_INDEX
    return label


def test_overlay_blends_only_object_pixels_with_alpha():
    image = np.full((40, 60, 3), 100, np.uint8)
    label = _label()
    out = viz.overlay(image, label, alpha=0.25)
    expected = np.round(0.75 * 100 + 0.25 * VOC_PALETTE[1].astype(float)).astype(np.uint8)
    assert (out[10, 10] == expected).all()
    assert (out[0, 0] == 100).all() and (out[39, 0] == 100).all()  # background and ignore untouched
    assert (viz.overlay(image, label, alpha=0.0) == image).all()
    with pytest.raises(PipsegError, match="alpha"):
        viz.overlay(image, label, alpha=1.5)


def test_legend_sits_beside_the_picture_with_one_swatch_per_present_class():
    label = _label()
    picture = viz.label_picture(label)
    rows = viz.legend_rows(label, ["background", "aeroplane", "bicycle", "bird"])
    assert rows == [(0, "background"), (1, "aeroplane"), (3, "bird")]
    out = viz.with_legend(picture, rows, ignore_row=True)
    assert out.shape[0] >= 40 and out.shape[1] > 60
    assert (out[:40, :60] == picture).all()  # the picture itself is not covered
    panel = out[:, 60:]
    for cls in (1, 3):  # each class colour appears as a swatch in the panel
        assert (panel == VOC_PALETTE[cls]).all(axis=-1).any()
    assert (panel == viz.IGNORE_RGB).all(axis=-1).any()
    assert not (panel == VOC_PALETTE[2]).all(axis=-1).any()  # absent class: no swatch


def test_error_map_colours():
    target = _label()
    pred = target.copy()
    pred[5:10, 5:30] = 0
    pred[38:, :] = 1
    out = viz.error_map(pred, target)
    assert (out[7, 10] == viz.ERROR_COLOURS["wrong"]).all()
    assert (out[15, 10] == viz.ERROR_COLOURS["right"]).all()
    assert (out[39, 0] == viz.ERROR_COLOURS["ignored"]).all()


def test_draw_boxes_outlines_in_class_colour():
    image = np.zeros((50, 50, 3), np.uint8)
    out = viz.draw_boxes(image, np.array([[10, 20, 30, 40, 2]]), ["bg", "a", "b"])
    assert (out[40, 20] == VOC_PALETTE[2]).all()  # bottom edge
    assert (out[30, 20] == 0).all()  # inside stays


def test_contact_sheet_layout_and_roundtrip(tmp_path):
    import cv2

    image = np.full((30, 40, 3), 50, np.uint8)
    rows = [[image, image], [image, image], [image, image]]
    sheet = viz.contact_sheet(rows, ["image", "label"], [(1, "aeroplane")])
    assert sheet.shape[0] >= 3 * 30 and sheet.shape[1] > 2 * 40
    path = tmp_path / "sheet.png"
    viz.write_picture(path, sheet)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert (back == sheet).all()


def test_charts_render():
    names = ["background", "cat", "dog"]
    matrix = np.array([[50, 2, 0], [3, 20, 1], [0, 0, 0]])
    heat = viz.confusion_figure(matrix, names)
    bars = viz.iou_figure([0.9, 0.5, float("nan")], names)
    for picture in (heat, bars):
        assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8
        assert picture.std() > 0  # not a blank canvas
