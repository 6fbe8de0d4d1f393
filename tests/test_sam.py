"""Segment Anything labels (`pipseg.labels.sam`) with SAMs built from the package's own modules.

No real weights exist here: a tiny SAM (ImageEncoderViT / PromptEncoder / MaskDecoder with a
TwoWayTransformer, random weights) goes through the same checkpoint path as a real one, and a
decoder with chosen outputs forces the cases random weights cannot (degenerate masks, the pick by
predicted IoU). The official ``vit_b`` layout is checked with the package's own builder (slow).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from pipseg.data.labels import read_label
from pipseg.data.pseudo import box_label
from pipseg.errors import PipsegError
from pipseg.labels.sam import (
    PATCH_KEY,
    SamItem,
    SamLabeller,
    load_sam,
    make_sam_labels,
    sam_model_type,
)

SIZE, DIM = 64, 32  # tiny SAM: 64-pixel input, 4x4 embedding, 16x16 low-res masks


def tiny_encoders(dim: int = DIM, depth: int = 2) -> tuple[ImageEncoderViT, PromptEncoder]:
    encoder = ImageEncoderViT(
        img_size=SIZE, patch_size=16, embed_dim=dim, depth=depth, num_heads=2, mlp_ratio=2.0,
        out_chans=DIM, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=2, global_attn_indexes=(depth - 1,),
    )  # fmt: skip
    prompts = PromptEncoder(
        embed_dim=DIM, image_embedding_size=(SIZE // 16, SIZE // 16),
        input_image_size=(SIZE, SIZE), mask_in_chans=4,
    )  # fmt: skip
    return encoder, prompts


def tiny_sam(dim: int = DIM, depth: int = 2) -> Sam:
    """A SAM of the official design, a few thousand parameters, random weights."""
    encoder, prompts = tiny_encoders(dim, depth)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=1, embedding_dim=DIM, mlp_dim=64, num_heads=2),
        transformer_dim=DIM, iou_head_depth=2, iou_head_hidden_dim=DIM,
    )  # fmt: skip
    return Sam(image_encoder=encoder, prompt_encoder=prompts, mask_decoder=decoder).eval()


class ChosenDecoder(nn.Module):
    """A mask decoder whose outputs are given: ``logits [N, 3, 16, 16]`` and ``iou [N, 3]`` for
    the N boxes in painting order (largest first)."""

    def __init__(self, logits: torch.Tensor, iou: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.iou = logits, iou

    def forward(
        self, sparse_prompt_embeddings: torch.Tensor, **_: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = sparse_prompt_embeddings.shape[0]
        return self.logits[:n], self.iou[:n]


EMPTY = torch.full((16, 16), -10.0)
FULL = torch.full((16, 16), 10.0)
LEFT = torch.where(torch.arange(16) < 8, 10.0, -10.0).expand(16, 16)  # left half of the image


def chosen_sam(candidates: list[list[torch.Tensor]], iou: list[list[float]]) -> Sam:
    encoder, prompts = tiny_encoders()
    logits = torch.stack([torch.stack(c) for c in candidates])
    decoder = ChosenDecoder(logits, torch.tensor(iou))
    return Sam(image_encoder=encoder, prompt_encoder=prompts, mask_decoder=decoder).eval()


def rng_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_boxes_respected(label: np.ndarray, boxes: np.ndarray, crowd: np.ndarray | None) -> None:
    """Every class pixel inside a box of its class, background outside all boxes, crowd 255."""
    h, w = label.shape
    ys, xs = np.mgrid[0:h, 0:w]
    in_any = np.zeros((h, w), bool)
    allowed: dict[int, np.ndarray] = {}
    for x0, y0, x1, y1, cls in boxes.tolist():
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        in_any |= inside
        allowed[cls] = allowed.get(cls, np.zeros((h, w), bool)) | inside
    crowd = np.zeros((h, w), bool) if crowd is None else crowd
    assert (label[crowd] == 255).all()
    rest = ~crowd
    assert (label[rest & ~in_any] == 0).all()
    assert not (label[rest] == 255).any()
    for cls in np.unique(label[rest]).tolist():
        if cls:
            assert cls in allowed and allowed[cls][rest & (label == cls)].all(), cls


BOXES = np.array([[2, 3, 50, 40, 1], [10, 8, 30, 30, 2], [35, 20, 60, 45, 3], [0, 0, 5, 5, 2]])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


def load_tiny(path: Path, **kw: object) -> Sam:
    return load_sam(path, "tiny", "cpu", builders={"tiny": tiny_sam}, **kw)


def test_loaded_tiny_sam_labels_respect_boxes_and_crowd(tiny_checkpoint: Path) -> None:
    model = load_tiny(tiny_checkpoint)
    saved = torch.load(tiny_checkpoint, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    crowd = np.zeros((48, 64), bool)
    crowd[40:, 50:] = True  # overlaps box 3 and the background
    for seed in range(3):
        label, stats = SamLabeller(model, min_fill=0.0, max_fill=1.0)(
            rng_image(48, 64, seed), BOXES, crowd=crowd
        )
        assert label.dtype == np.uint8 and label.shape == (48, 64)
        assert stats.boxes == 4 and stats.fallbacks == 0 and stats.fill_hist.sum() == 4
        check_boxes_respected(label, BOXES, crowd)


def test_full_masks_paint_like_filled_boxes_smaller_on_top() -> None:
    boxes = BOXES[[0, 2, 1, 3]]  # largest first, as the decoder's outputs are ordered
    model = chosen_sam([[FULL, FULL, FULL]] * 4, [[0.5, 0.5, 0.5]] * 4)
    label, stats = SamLabeller(model, max_fill=1.0)(rng_image(48, 64), boxes[::-1].copy())
    np.testing.assert_array_equal(label, box_label(boxes, 48, 64))
    assert stats.fallbacks == 0


def test_highest_predicted_iou_is_chosen() -> None:
    boxes = np.array([[0, 0, 63, 31, 1], [16, 40, 47, 47, 2]])  # largest first
    candidates = [[EMPTY, FULL, LEFT], [LEFT, FULL, EMPTY]]
    model = chosen_sam(candidates, [[0.1, 0.2, 0.9], [0.1, 0.9, 0.3]])
    label, _ = SamLabeller(model, max_fill=1.0)(rng_image(48, 64), boxes)
    left = label[:32] == 1
    assert left[:, :30].all() and not left[:, 34:].any()  # box 1 took LEFT
    assert (label[40:48, 16:48] == 2).all()  # box 2 took FULL


def test_degenerate_masks_take_the_fallback_and_are_counted() -> None:
    boxes = np.array([[16, 0, 47, 23, 1], [0, 26, 24, 47, 2], [40, 30, 63, 47, 3]])  # largest first
    model = chosen_sam([[LEFT] * 3, [EMPTY] * 3, [FULL] * 3], [[0.5] * 3] * 3)
    fallback = np.zeros((48, 64), np.uint8)
    fallback[30:40, 5:10] = 2  # inside box 2
    fallback[35:47, 50:60] = 3  # inside box 3
    fallback[0:5, 20:25] = 1  # inside box 1, which is not degenerate: unused
    calls = []
    label, stats = SamLabeller(model)(
        rng_image(48, 64), boxes, fallback=lambda: calls.append(1) or fallback
    )
    assert (stats.empty, stats.full, stats.fallbacks, len(calls)) == (1, 1, 2, 1)
    np.testing.assert_array_equal(label[26:48, 0:25] == 2, fallback[26:48, 0:25] == 2)
    np.testing.assert_array_equal(label[30:48, 40:64] == 3, fallback[30:48, 40:64] == 3)
    ones = label == 1
    assert ones[:24, 16:30].all() and not ones[:, 34:].any() and not ones[24:].any()
    # Without a degenerate mask the fallback is never computed.
    calls.clear()
    SamLabeller(model)(rng_image(48, 64), boxes[:1], fallback=lambda: calls.append(1) or fallback)
    assert not calls


class CountingLabeller(SamLabeller):
    def __init__(self, model: Sam) -> None:
        super().__init__(model)
        self.seen: list[tuple[int, int]] = []

    def __call__(self, image: np.ndarray, boxes: np.ndarray, **kw: object):  # type: ignore[override]
        self.seen.append(image.shape[:2])
        return super().__call__(image, boxes, **kw)


def fill_boxes(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    return box_label(boxes, *image.shape[:2])


def test_runner_writes_resumes_and_notes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    items = []
    for i, (h, w) in enumerate([(48, 64), (64, 40), (30, 64), (64, 64)]):
        path = tmp_path / "images" / f"im{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng_image(h, w, i)).save(path)
        items.append(SamItem(f"im{i}", path, np.array([[1, 2, w - 5, h - 3, 1 + i % 2]])))
    crowd = np.zeros((48, 64), bool)
    crowd[:4, :4] = True
    labeller = CountingLabeller(load_tiny(tiny_checkpoint))
    progress, notes = [], []
    report = make_sam_labels(
        items, tmp_path / "out", labeller, fallback=fill_boxes,
        crowd=lambda item: crowd if item.sample_id == "im0" else None,
        progress=lambda done, total: progress.append((done, total)), on_note=notes.append,
    )  # fmt: skip
    assert (report.written, report.skipped, report.stats.boxes) == (4, 0, 4)
    assert progress == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(notes) == 1 and "s per image" in notes[0] and "3 images to go" in notes[0]  # after the first image
    assert report.seconds_per_image is not None and report.seconds_per_image > 0
    for item in items:
        label = read_label(tmp_path / "out" / f"{item.sample_id}.png")
        check_boxes_respected(label, item.boxes, crowd if item.sample_id == "im0" else None)
    assert (read_label(tmp_path / "out" / "im0.png")[:4, :4] == 255).all()

    (tmp_path / "out" / "im2.png").unlink()
    labeller.seen.clear()
    again = make_sam_labels(items, tmp_path / "out", labeller, fallback=fill_boxes)
    assert (again.written, again.skipped, labeller.seen) == (1, 3, [(30, 64)])
    labeller.seen.clear()
    assert make_sam_labels(items, tmp_path / "out", labeller, fallback=fill_boxes).skipped == 4
    assert labeller.seen == []


class NotWeights:
    pass


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing", "SAM checkpoint not found"),
        ("text", "not a PyTorch checkpoint"),
        ("code", "needs code to load ("),
        ("module", "needs code to load ("),
        ("list", "holds a list"),
        ("keys", f"no key {PATCH_KEY}; keys: foo, bar"),
        ("width", "has shape (40, 3, 16, 16), a width of no known SAM type"),
        ("sam2", "a SAM 2 checkpoint"),
        ("deeper", "not a SAM tiny checkpoint (unexpected keys "),
        ("shallower", "not a SAM tiny checkpoint (missing keys "),
        ("type", "--sam-model vit_x: not a SAM model type"),
    ],
)
def test_bad_checkpoints_are_one_line_errors(
    case: str, expect: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    path, model_type = tmp_path / f"{case}.pth", None
    if case == "text":
        path.write_text("hello, not weights\n")
    elif case == "code":
        torch.save({"a": NotWeights()}, path)
    elif case == "module":
        torch.save(tiny_sam(), path)
    elif case == "list":
        torch.save([torch.zeros(1)], path)
    elif case == "keys":
        torch.save({"foo": torch.zeros(1), "bar": torch.zeros(1)}, path)
    elif case == "width":
        torch.save({PATCH_KEY: torch.zeros(40, 3, 16, 16)}, path)
    elif case == "sam2":
        torch.save({"model": {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1)}}, path)
    elif case == "deeper":  # a tiny SAM of another depth and width, forced to "tiny"
        torch.save(tiny_sam(dim=48, depth=3).state_dict(), path)
        model_type = "tiny"
    elif case == "shallower":
        torch.save(tiny_sam(depth=1).state_dict(), path)
        model_type = "tiny"
    elif case == "type":
        path, model_type = tiny_checkpoint, "vit_x"
    with pytest.raises(PipsegError) as info:
        load_sam(path, model_type, "cpu", builders={"tiny": tiny_sam})
    message = str(info.value)
    assert expect in message and "\n" not in message
    assert len(message.replace(str(path), "")) < 300
    if case != "type":
        assert str(path) in message
    if case == "code":
        assert "NotWeights" in message
    if case == "deeper":
        assert "wrong shapes " in message and "pos_embed (1, 4, 4, 48) != (1, 4, 4, 32)" in message


@pytest.mark.parametrize(
    ("name", "builder"),
    [("vit_b", build_sam_vit_b), ("vit_l", build_sam_vit_l), ("vit_h", build_sam_vit_h)],
)
def test_type_read_from_the_official_layouts(name: str, builder) -> None:
    with torch.device("meta"):  # shapes only: no memory, no time
        state = builder().state_dict()
    assert sam_model_type(state) == name


@pytest.mark.slow
def test_official_vit_b_layout_loads_and_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(build_sam_vit_b().state_dict(), path)
    model = load_sam(path, device="cpu")  # type read from the file
    assert len(model.image_encoder.blocks) == 12
    labeller = SamLabeller(model, min_fill=0.0, max_fill=1.0)
    for seed, (h, w) in enumerate([(40, 56), (64, 48)]):
        boxes = np.array([[0, 0, w - 1, h // 2, 1], [w // 4, h // 4, w - 3, h - 2, 2]])
        label, stats = labeller(rng_image(h, w, seed), boxes)
        assert stats.boxes == 2
        check_boxes_respected(label, boxes, None)
