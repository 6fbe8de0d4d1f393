"""``data.box_geometry``: the published training geometry against a naive re-implementation of
the authors' rules, ``exact`` against its own documented rules, and the paper configs.

The oracles work per box in plain Python integers (``int(x * s)``, ``crop - x``, exact
fractions for the logit grid), resize labels with PIL's ``NEAREST`` as the published code does,
and share no code with ``pipseg.data.transforms``. Which scale, crop offset and flip
`TrainAugment` drew is read back from its output image (a noise image has one matching window),
so the tests do not depend on the order of the random draws.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipseg.config import Config, DataConfig, load_config
from pipseg.data.dataset import SegDataset
from pipseg.data.transforms import (
    TrainAugment,
    clip_boxes_published,
    flip_boxes_published,
    resize_sample,
    scale_boxes_published,
)
from pipseg.errors import PipsegError
from pipseg.losses import PIPLoss, to_logit_grid

CONFIGS = Path(__file__).parent.parent / "configs"
PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5]
PAD_RGB = (11.4, 22.6, 33.0)

Box = tuple[int, int, int, int, int]


# ------------------------------------------------------------------------------ naive oracles
def naive_published_boxes(
    boxes: list[Box], s: float, x: int, y: int, c: int, flip: bool
) -> list[Box]:
    """The authors' box rules, one box at a time: truncating scale, shift into the crop, clip
    to ``[0, c - 1]``, flip ``x -> c - x``, keep every box whose corners stay ordered."""
    out = []
    for x0, y0, x1, y1, cls in boxes:
        x0, y0, x1, y1 = int(x0 * s), int(y0 * s), int(x1 * s), int(y1 * s)
        x0, x1, y0, y1 = x0 - x, x1 - x, y0 - y, y1 - y
        x0, y0, x1, y1 = (min(max(v, 0), c - 1) for v in (x0, y0, x1, y1))
        if flip:
            x0, x1 = c - x1, c - x0
        if x1 - x0 >= 0 and y1 - y0 >= 0:
            out.append((x0, y0, x1, y1, cls))
    return out


def naive_exact_boxes(
    boxes: list[Box],
    sx: float,
    sy: float,
    size: tuple[int, int],
    x: int,
    y: int,
    c: int,
    flip: bool,
) -> list[Box]:
    """pipseg's documented rules: enclosing scale, drop boxes left with no area, clip, mirror."""
    nh, nw = size
    out = []
    for x0, y0, x1, y1, cls in boxes:
        if (sx, sy) != (1.0, 1.0):
            x0, y0 = math.floor(x0 * sx), math.floor(y0 * sy)
            x1, y1 = (
                min(math.ceil((x1 + 1) * sx) - 1, nw - 1),
                min(math.ceil((y1 + 1) * sy) - 1, nh - 1),
            )
        x0, x1, y0, y1 = x0 - x, x1 - x, y0 - y, y1 - y
        if x1 < 0 or x0 >= c or y1 < 0 or y0 >= c:
            continue
        x0, y0, x1, y1 = (min(max(v, 0), c - 1) for v in (x0, y0, x1, y1))
        if flip:
            x0, x1 = c - 1 - x1, c - 1 - x0
        out.append((x0, y0, x1, y1, cls))
    return out


def naive_published_grid(boxes: list[Box], c: int, grid: int) -> list[Box]:
    """The published mapping onto the logit grid: ``v * grid / c``, clipped, rounded half to
    even, in exact rational arithmetic."""

    def to_grid(v: int) -> int:
        return round(min(max(Fraction(v * grid, c), Fraction(0)), Fraction(grid - 1)))

    return [
        (to_grid(x0), to_grid(y0), to_grid(x1), to_grid(y1), cls) for x0, y0, x1, y1, cls in boxes
    ]


def naive_canvas(image: np.ndarray, label: np.ndarray, size: tuple[int, int], c: int):
    """Resize (image bilinear with OpenCV, label with PIL NEAREST as the published code does) and
    pad bottom/right to ``c`` (image with the rounded padding colour, label with 255)."""
    nh, nw = size
    if (nh, nw) != label.shape:
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        label = np.asarray(Image.fromarray(label).resize((nw, nh), resample=Image.NEAREST))
    ch, cw = max(nh, c), max(nw, c)
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[:] = [round(v) for v in PAD_RGB]
    canvas[:nh, :nw] = image
    canvas_label = np.full((ch, cw), 255, np.uint8)
    canvas_label[:nh, :nw] = label
    return canvas, canvas_label


def find_draws(canvas: np.ndarray, out: np.ndarray, c: int) -> list[tuple[int, int, bool]]:
    """Every ``(y, x, flipped)`` whose crop of ``canvas`` (flipped or not) equals ``out``."""
    found = []
    for flipped in (False, True):
        target = out[:, ::-1] if flipped else out
        h, w = canvas.shape[:2]
        corner = np.all(canvas[: h - c + 1, : w - c + 1] == target[0, 0], axis=-1)
        for y, x in zip(*np.nonzero(corner), strict=True):
            if np.array_equal(canvas[y : y + c, x : x + c], target):
                found.append((int(y), int(x), flipped))
    return found


def random_sample(seed: int, h: int, w: int, count: int):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (h, w), dtype=np.uint8)
    label[rng.random((h, w)) < 0.1] = 255
    rows = []
    for k in range(count):
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        rows.append((x0, y0, x1, y1, 1 + k % 20))
    if count and rng.random() < 0.3:
        rows[0] = (0, 0, w - 1, h - 1, rows[0][4])  # a box as large as the image
    return image, label, np.array(rows, dtype=np.int64).reshape(-1, 5)


def run_augment(
    geometry: str, seed: int, size: tuple[int, int], count: int, crop: int, scale: float, flip: bool
):
    image, label, boxes = random_sample(seed, *size, count)
    augment = TrainAugment(crop, [scale], flip=flip, pad_rgb=PAD_RGB, geometry=geometry)
    out = augment(image, label, boxes, torch.Generator().manual_seed(seed))
    return (image, label, boxes), out


SAMPLES = dict(
    seed=st.integers(0, 100_000),
    size=st.tuples(st.integers(6, 44), st.integers(6, 44)),
    count=st.integers(0, 6),
    crop=st.integers(4, 56),
    scale=st.one_of(st.sampled_from(PAPER_SCALES), st.floats(0.3, 1.6)),
    flip=st.booleans(),
)


# ------------------------------------------------------------------------- published geometry
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**SAMPLES)
def test_published_geometry_matches_the_authors_rules(
    seed: int, size: tuple[int, int], count: int, crop: int, scale: float, flip: bool
) -> None:
    (image, label, boxes), (out_image, out_label, out_boxes) = run_augment(
        "published", seed, size, count, crop, scale, flip
    )
    h, w = size
    scaled = (max(1, int(h * scale)), max(1, int(w * scale)))  # the published int(h * s)
    canvas, canvas_label = naive_canvas(image, label, scaled, crop)
    draws = find_draws(canvas, out_image, crop)
    assert draws, "the output image is no crop of the published scaled and padded image"
    assert flip or not any(f for _, _, f in draws)
    y, x, flipped = draws[0]
    expected_label = canvas_label[y : y + crop, x : x + crop]
    np.testing.assert_array_equal(out_label, expected_label[:, ::-1] if flipped else expected_label)

    raw = naive_published_boxes([tuple(b) for b in boxes.tolist()], scale, x, y, crop, flipped)
    # Every box is kept; a corner at `crop` (published flip) is returned as `crop - 1`.
    clipped = [(min(x0, crop - 1), y0, min(x1, crop - 1), y1, c) for x0, y0, x1, y1, c in raw]
    assert [tuple(b) for b in out_boxes.tolist()] == clipped
    assert len(out_boxes) == len(boxes)
    # The loss sees the published code's boxes: equal after mapping onto the logit grid.
    labels_t = torch.from_numpy(out_label.astype(np.int64))[None]
    for grid in ((crop - 1) // 8 + 1, crop):
        _, grid_boxes = to_logit_grid(labels_t, torch.from_numpy(out_boxes)[None], (grid, grid))
        assert [tuple(b) for b in grid_boxes[0].tolist()] == naive_published_grid(raw, crop, grid)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**SAMPLES)
def test_exact_geometry_follows_its_documented_rules(
    seed: int, size: tuple[int, int], count: int, crop: int, scale: float, flip: bool
) -> None:
    (image, label, boxes), (out_image, out_label, out_boxes) = run_augment(
        "exact", seed, size, count, crop, scale, flip
    )
    h, w = size
    scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
    canvas, canvas_label = naive_canvas(image, label, scaled, crop)
    draws = find_draws(canvas, out_image, crop)
    assert draws
    y, x, flipped = draws[0]
    expected_label = canvas_label[y : y + crop, x : x + crop]
    np.testing.assert_array_equal(out_label, expected_label[:, ::-1] if flipped else expected_label)
    sx, sy = scaled[1] / w, scaled[0] / h
    expected = naive_exact_boxes(
        [tuple(b) for b in boxes.tolist()], sx, sy, scaled, x, y, crop, flipped
    )
    assert [tuple(b) for b in out_boxes.tolist()] == expected


@pytest.mark.parametrize("seed", range(4))
def test_exact_is_the_default(seed: int) -> None:
    image, label, boxes = random_sample(seed, 37, 29, 5)
    default = TrainAugment(24, PAPER_SCALES, pad_rgb=PAD_RGB)
    exact = TrainAugment(24, PAPER_SCALES, pad_rgb=PAD_RGB, geometry="exact")
    a = default(image, label, boxes, torch.Generator().manual_seed(seed))
    b = exact(image, label, boxes, torch.Generator().manual_seed(seed))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_hand_worked_published_steps() -> None:
    boxes = np.array([[3, 5, 7, 9, 1], [0, 0, 1, 1, 2]])
    np.testing.assert_array_equal(
        scale_boxes_published(boxes, 0.75), [[2, 3, 5, 6, 1], [0, 0, 0, 0, 2]]
    )
    np.testing.assert_array_equal(
        scale_boxes_published(boxes, 1.5), [[4, 7, 10, 13, 1], [0, 0, 1, 1, 2]]
    )
    # Crop 20x20 at (10, 10): above-left -> the point (0, 0); below-right -> (19, 19); kept.
    boxes = np.array([[0, 0, 9, 9, 1], [50, 50, 60, 60, 2], [15, 18, 30, 40, 3], [0, 12, 4, 15, 4]])
    np.testing.assert_array_equal(
        clip_boxes_published(boxes, x=10, y=10, size=20),
        [[0, 0, 0, 0, 1], [19, 19, 19, 19, 2], [5, 8, 19, 19, 3], [0, 2, 0, 5, 4]],
    )
    # Flip in a crop 10 wide: x -> 10 - x; a corner at 10 comes back as 9 (same grid column).
    flipped = flip_boxes_published(np.array([[2, 0, 5, 3, 1], [0, 1, 0, 2, 3]]), 10)
    np.testing.assert_array_equal(flipped, [[5, 0, 8, 3, 1], [9, 1, 9, 2, 3]])


def test_published_sizes_truncate() -> None:
    image = np.zeros((7, 33, 3), np.uint8)
    label = np.zeros((7, 33), np.uint8)
    boxes = np.zeros((0, 5), np.int64)
    assert resize_sample(image, label, boxes, 0.75, "published")[1].shape == (5, 24)  # int(24.75)
    assert resize_sample(image, label, boxes, 0.75, "exact")[1].shape == (5, 25)  # round(24.75)


def test_unknown_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="geometry"):
        TrainAugment(10, geometry="paper")


# ----------------------------------------------------------- the loss sees the edge lines
def naive_loss(
    logits: np.ndarray, labels: np.ndarray, boxes: list[list[Box]], r: int = 5
) -> tuple[float, float, float]:
    """(loss, box, pixel) of docs/METHOD.md section 2 with lamb 0.2, alpha 0.5, tau 5, sigma 2, per box."""
    lamb, alpha, tau, sigma = 0.2, 0.5, 5.0, 2.0
    b_count, _, h, w = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    box_sum, lines = 0.0, 1e-5
    ax = np.arange(-r, r + 1)
    kernel = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    s = np.zeros((b_count, h, w))
    for b in range(b_count):
        cover, outline = np.ones((h, w)), np.zeros((h, w))
        for x0, y0, x1, y1, c in boxes[b]:
            region = p[b, c, y0 : y1 + 1, x0 : x1 + 1]
            for axis in (0, 1):
                box_sum -= (
                    alpha * np.log(region.max(axis)) + (1 - alpha) * np.log(1 - region.min(axis))
                ).sum()
            lines += (y1 - y0 + 1) + (x1 - x0 + 1)
            cover[y0 : y1 + 1, x0 : x1 + 1] += 1
            ring = np.zeros((h, w))
            ring[y0 : y1 + 1, x0 : x1 + 1] = 1
            ring[y0 + 1 : y1, x0 + 1 : x1] = 0
            outline += ring
        padded = np.pad(outline, r, mode="reflect")
        near = np.array(
            [
                [
                    (kernel * padded[i : i + 2 * r + 1, j : j + 2 * r + 1]).sum() + 1
                    for j in range(w)
                ]
                for i in range(h)
            ]
        )
        s[b] = cover * near
    gamma = (1 / (1 + np.exp(-s / s.max())) - 0.5) * tau + 1
    g = gamma / gamma.sum(axis=(1, 2), keepdims=True) * h * w
    keep = labels != 255
    ce = -np.take_along_axis(log_p, np.where(keep, labels, 0)[:, None], 1)[:, 0] * keep
    pixel = float((g * ce).mean())
    box = box_sum / lines
    return lamb * box + pixel, box, pixel


def test_edge_lines_count_in_both_loss_terms() -> None:
    """Boxes outside the crop reach `PIPLoss` as lines and points and weigh in both terms, as in
    the published loss (which skips only boxes with ``h * w == 0``, never true after clipping)."""
    crop, grid = 40, 12
    boxes = np.array(
        [[50, 12, 70, 30, 3], [-30, -20, -5, -2, 4], [8, 0, 20, 15, 1], [5, 45, 38, 60, 2]]
    )
    cropped = clip_boxes_published(boxes, x=0, y=0, size=crop)
    assert cropped.tolist() == [
        [39, 12, 39, 30, 3],
        [0, 0, 0, 0, 4],
        [8, 0, 20, 15, 1],
        [5, 39, 38, 39, 2],
    ]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (1, crop, crop))
    labels[0, :3] = 255
    grid_labels, grid_boxes = to_logit_grid(
        torch.from_numpy(labels), torch.from_numpy(cropped)[None], (grid, grid)
    )
    logits = torch.from_numpy(rng.normal(size=(1, 5, grid, grid)))
    parts = PIPLoss(box_search="dense").forward_parts(logits, grid_labels, grid_boxes)
    expected = naive_loss(
        logits.numpy(), grid_labels.numpy(), [[tuple(b) for b in grid_boxes[0].tolist()]]
    )
    for key, value in zip(("loss", "box", "pixel"), expected, strict=True):
        assert float(parts[key]) == pytest.approx(value, rel=1e-9, abs=1e-12)
    # Without the lines both terms change: they were counted.
    inside = grid_boxes[:, 2:3]
    without = PIPLoss(box_search="dense").forward_parts(logits, grid_labels, inside)
    assert float(without["box"]) != pytest.approx(float(parts["box"]), rel=1e-6)
    assert float(without["pixel"]) != pytest.approx(float(parts["pixel"]), rel=1e-6)


# ------------------------------------------------------------------------ dataset and config
def test_dataset_applies_the_configured_geometry(synthetic_data_cfg: DataConfig) -> None:
    cfg = synthetic_data_cfg.model_copy(update={"box_geometry": "published"})
    dataset = SegDataset(cfg, "train", "box", train=True)
    pad = (122.675, 116.669, 104.008)
    kinds = {
        g: TrainAugment(cfg.crop_size, cfg.scales, cfg.flip, pad, geometry=g)
        for g in ("exact", "published")
    }
    differs = False
    for seed in range(8):
        index = seed % len(dataset)
        torch.manual_seed(seed)
        item = dataset[index]
        raw = dataset.load(index)
        results = {}
        for name, augment in kinds.items():
            torch.manual_seed(seed)
            results[name] = augment(*raw)
        np.testing.assert_array_equal(item["boxes"].numpy(), results["published"][2])
        np.testing.assert_array_equal(
            item["image"].permute(1, 2, 0).numpy(), results["published"][0]
        )
        differs |= not np.array_equal(results["exact"][2], results["published"][2])
    assert differs


def test_config_fields_and_defaults() -> None:
    cfg = Config()
    assert cfg.data.box_geometry == "exact" and cfg.eval.crf_canvas == "image"
    cfg = load_config(None, ["data.box_geometry=published", "eval.crf_canvas=padded"])
    assert cfg.data.box_geometry == "published" and cfg.eval.crf_canvas == "padded"
    with pytest.raises(PipsegError, match=r"data\.box_geometry"):
        load_config(None, ["data.box_geometry=paper"])
    with pytest.raises(PipsegError, match=r"eval\.crf_canvas"):
        load_config(None, ["eval.crf_canvas=crop"])


@pytest.mark.parametrize("name", ["sdi", "wssl"])
def test_paper_configs_switch_on_the_published_behaviour(name: str) -> None:
    paper = load_config(CONFIGS / f"{name}-paper.yaml")
    plain = load_config(CONFIGS / f"{name}.yaml")
    assert paper.data.box_geometry == "published" and paper.eval.crf_canvas == "padded"
    assert paper.model.init == "deeplab-init"
    assert paper.optim.classifier_lr_mult == 1.0
    assert paper.runtime.val_every == paper.optim.iters  # only the final iterate is validated
    assert paper.runtime.out_dir != plain.runtime.out_dir
    # Everything else is the plain config's recipe.
    for section in ("loss", "optim", "crf"):
        assert getattr(paper, section) == getattr(plain, section), section
    same = {"box_geometry", "crf_canvas"}
    assert paper.data.model_dump(exclude=same) == plain.data.model_dump(exclude=same)
    assert paper.eval.model_dump(exclude=same) == plain.eval.model_dump(exclude=same)
    assert paper.model.name == plain.model.name
