"""The pairwise colour-affinity term against a naive loop written from its definition, with
scikit-image's Lab conversion as the colour oracle."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from pipseg.config import LossConfig, validate_config
from pipseg.data.synthetic import SYNTHETIC_CLASSES
from pipseg.engine import train
from pipseg.engine.criterion import build_loss
from pipseg.losses import PairwiseAffinityLoss, PIPLoss, WithPairwise
from pipseg.losses.pairwise import rgb_to_lab


def naive_pairwise(logits, images, boxes, dilation=2, threshold=0.3, theta=2.0) -> float:
    """Loops over images, pixels and neighbours; colours block-averaged onto the grid."""
    b, c, h, w = logits.shape
    f = images.shape[-1] // w
    p = torch.softmax(logits.double(), 1).numpy()
    total, count = 0.0, 0
    for i in range(b):
        small = images[i].double().numpy().reshape(3, h, f, w, f).mean((2, 4))
        lab = rgb2lab(small.transpose(1, 2, 0) / 255.0)
        inside = np.zeros((h, w), bool)
        for x0, y0, x1, y1, cls in boxes[i].tolist():
            if cls >= 0:
                inside[y0 : y1 + 1, x0 : x1 + 1] = True
        for y in range(h):
            for x in range(w):
                for dy in (-dilation, 0, dilation):
                    for dx in (-dilation, 0, dilation):
                        yy, xx = y + dy, x + dx
                        if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w):
                            continue
                        if not (inside[y, x] and inside[yy, xx]):
                            continue
                        if math.exp(-np.linalg.norm(lab[y, x] - lab[yy, xx]) / theta) < threshold:
                            continue
                        total -= math.log(float((p[i, :, y, x] * p[i, :, yy, xx]).sum()))
                        count += 1
    return total / max(count, 1)


def blocky_images(rng: np.random.Generator, b: int, h: int, w: int, f: int) -> torch.Tensor:
    """Colour patches of 4x4 grid cells with some noise: some neighbours similar, some not."""
    patches = rng.integers(0, 256, (b, 3, h // 4, w // 4)).repeat(4, axis=2).repeat(4, axis=3)
    images = patches.repeat(f, axis=2).repeat(f, axis=3) + rng.normal(0, 2, (b, 3, h * f, w * f))
    return torch.from_numpy(images.clip(0, 255)).float()


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    b, c, h, w, f = 2, 4, 12, 12, 4
    logits = torch.from_numpy(rng.normal(0, 2, (b, c, h, w))).float()
    images = blocky_images(rng, b, h, w, f)
    boxes = torch.tensor(
        [[[1, 1, 8, 9, 2], [-1, -1, -1, -1, -1]], [[0, 0, 9, 11, 1], [2, 3, 5, 6, 3]]]
    )
    ours = PairwiseAffinityLoss()(logits, images, boxes)
    expected = naive_pairwise(logits, images, boxes)
    assert expected > 0  # some pairs are similar, and some are not:
    assert float(PairwiseAffinityLoss(threshold=0.0)(logits, images, boxes)) != pytest.approx(
        expected
    )
    assert float(ours) == pytest.approx(expected, rel=1e-4)


def test_lab_matches_scikit_image() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (1, 3, 7, 9)).astype(np.float32)
    expected = rgb2lab(rgb[0].transpose(1, 2, 0) / 255.0).transpose(2, 0, 1)
    np.testing.assert_allclose(rgb_to_lab(torch.from_numpy(rgb))[0].numpy(), expected, atol=2e-3)


def test_no_pairs_adds_nothing_and_confident_agreement_costs_nothing() -> None:
    logits = torch.zeros(1, 3, 8, 8)
    images = torch.full((1, 3, 32, 32), 90.0)
    padding = torch.full((1, 1, 5), -1)
    assert float(PairwiseAffinityLoss()(logits, images, padding)) == 0.0
    logits[:, 1] = 30.0  # one class everywhere: neighbours share it with probability ~1
    box = torch.tensor([[[0, 0, 7, 7, 1]]])
    assert float(PairwiseAffinityLoss()(logits, images, box)) == pytest.approx(0.0, abs=1e-6)


def test_build_loss_adds_the_weighted_term_and_training_passes_the_images(
    prepared_root: Path, tmp_path: Path
) -> None:
    loss = build_loss(LossConfig(pairwise=0.5))
    assert isinstance(loss, WithPairwise) and isinstance(loss.base, PIPLoss)
    assert not isinstance(build_loss(LossConfig()), WithPairwise)
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(0, 2, (1, 6, 12, 12))).float()
    labels = torch.from_numpy(rng.integers(0, 6, (1, 12, 12)))
    images = blocky_images(rng, 1, 12, 12, 4)
    boxes = torch.tensor([[[1, 1, 8, 9, 2]]])
    parts = loss.forward_parts(logits, labels, boxes, images)
    base = loss.base.forward_parts(logits, labels, boxes)["loss"]
    assert float(parts["loss"]) == pytest.approx(
        float(base) + 0.5 * naive_pairwise(logits, images, boxes), rel=1e-4
    )

    cfg = validate_config({
        "data": {"root": str(prepared_root), "classes": list(SYNTHETIC_CLASSES), "crop_size": 64,
                 "label_source": "box", "workers": 0},
        "model": {"name": "tiny_deeplab", "init": "none"}, "loss": {"pairwise": 1.0},
        "optim": {"iters": 2, "batch_size": 2, "lr": 0.01},
        "runtime": {"device": "cpu", "out_dir": str(tmp_path / "run"), "val_every": 2, "val_max_images": 1},
        "eval": {"pad_size": 97},
    })  # fmt: skip
    result = train(cfg)
    assert result.finished and math.isfinite(result.metrics["miou"])
