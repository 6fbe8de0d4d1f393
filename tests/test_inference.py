"""Test recipe (pad, forward, upsample align_corners, softmax, crop), evaluate_model and `pipseg predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import VOC_CLASSES
from pipseg.data.labels import read_label
from pipseg.errors import PipsegError
from pipseg.evaluate import evaluate_model
from pipseg.inference import checkpoint_pad_size, padded_size, predict_probs, predict_probs_batch
from pipseg.models import CHECKPOINT_FORMAT, TORCHVISION_RGB, build_model
from pipseg.predict import collect_inputs, predict_files

runner = CliRunner()
CLASSES = ["background", "a", "b", "c"]


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("tiny_deeplab", len(CLASSES))
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # confident, varied predictions
    return model.eval()


def save_checkpoint(model: torch.nn.Module, path: Path, config: dict | None = None) -> Path:
    torch.save({
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": model.name,
        "num_classes": model.num_classes, "classes": CLASSES,
        "input_convention": model.input_convention.as_dict(), "config": config or {}, "iteration": 7,
        "optimizer": {}, "scaler": None, "rng": {}, "best_miou": None, "metrics": None,
        "label_source": "box", "init": {"file": None, "sha256": None},
    }, path)  # fmt: skip
    return path


# --- the recipe against a hand-written reference ---------------------------------------------


def bilinear_align_corners(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Naive bilinear resize of ``[C, H, W]`` with align_corners=True."""
    _, h, w = x.shape

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
        lo = np.clip(np.floor(src).astype(int), 0, n_in - 1)
        hi = np.clip(lo + 1, 0, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = coords(out_h, h)
    x0, x1, fx = coords(out_w, w)
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def reference_probs(model: torch.nn.Module, image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    mean = np.array(TORCHVISION_RGB.mean) * 255
    padded = np.zeros((*out_hw, 3)) + mean  # pad with the mean colour -> 0 after normalising
    padded[:h, :w] = image
    x = (padded / 255 - np.array(TORCHVISION_RGB.mean)) / np.array(TORCHVISION_RGB.std)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(2, 0, 1)[None]).float())[0].double().numpy()
    up = bilinear_align_corners(logits, *out_hw)
    e = np.exp(up - up.max(0))
    return (e / e.sum(0))[:, :h, :w]


@pytest.mark.parametrize(("hw", "padded"), [((37, 50), (65, 65)), ((70, 40), (73, 65))])
def test_predict_probs_matches_reference(tiny: torch.nn.Module, hw, padded) -> None:  # noqa: ANN001
    assert padded_size(*hw, pad_size=65) == padded
    image = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
    got = predict_probs(tiny, image, pad_size=65)
    assert got.dtype == torch.float32 and got.shape == (len(CLASSES), *hw)
    np.testing.assert_allclose(got.numpy(), reference_probs(tiny, image, padded), atol=2e-5)


def test_batch_equals_single_and_accepts_tensors(tiny: torch.nn.Module) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(30, 40), (50, 20), (65, 65)]]
    batch = predict_probs_batch(tiny, [torch.from_numpy(i).permute(2, 0, 1) for i in images], pad_size=65)
    for image, probs in zip(images, batch, strict=True):
        torch.testing.assert_close(probs, predict_probs(tiny, image, pad_size=65), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="padded size"):
        predict_probs_batch(tiny, [images[0], np.zeros((80, 80, 3), np.uint8)], pad_size=65)


def test_tta_shape_and_normalised(tiny: torch.nn.Module) -> None:
    image = np.random.default_rng(3).integers(0, 256, (31, 45, 3), dtype=np.uint8)
    tiny.train()
    probs = predict_probs(tiny, image, pad_size=65, tta=True)
    assert tiny.training, "the caller's train/eval mode is restored"
    tiny.eval()
    assert probs.shape == (len(CLASSES), 31, 45)
    torch.testing.assert_close(probs.sum(0), torch.ones(31, 45))
    assert not torch.allclose(probs, predict_probs(tiny, image, pad_size=65))


def test_evaluate_model_matches_naive_count(tiny: torch.nn.Module) -> None:
    rng = np.random.default_rng(4)
    samples = []
    for i, hw in enumerate([(30, 40), (30, 40), (50, 20)]):
        label = rng.integers(0, len(CLASSES), hw).astype(np.uint8)
        label[:3] = 255
        samples.append((rng.integers(0, 256, hw + (3,), dtype=np.uint8), label, f"img{i}"))
    matrix = np.zeros((len(CLASSES),) * 2, np.int64)
    for image, label, _ in samples:
        pred = predict_probs(tiny, image, pad_size=65).argmax(0).numpy()
        keep = label != 255
        np.add.at(matrix, (label[keep], pred[keep]), 1)
    iou = np.diag(matrix) / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))
    calls = []
    crf = lambda image, probs: probs.argmax(0).astype(np.uint8)  # noqa: E731 (identity "CRF")
    as_dicts = [{"image": torch.from_numpy(i).permute(2, 0, 1), "label": torch.from_numpy(lab).long(), "id": n}
                for i, lab, n in samples]  # fmt: skip
    result = evaluate_model(tiny, as_dicts, num_classes=len(CLASSES), pad_size=65, crf=crf, batch_size=2,
                            progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert result["miou"] == pytest.approx(np.nanmean(iou))
    assert result["crf"]["miou"] == pytest.approx(result["miou"])
    assert calls[-1] == (3, 3)
    plain = evaluate_model(tiny, iter(samples), num_classes=len(CLASSES), pad_size=65)
    assert plain["iou"] == pytest.approx(result["iou"], nan_ok=True) and "crf" not in plain
    batches = evaluate_model(tiny, [as_dicts[:2], as_dicts[2:]], num_classes=len(CLASSES), pad_size=65)
    assert batches["iou"] == pytest.approx(result["iou"], nan_ok=True)  # collate_list batches
    bad = [(samples[0][0], samples[2][1], "mismatch")]
    with pytest.raises(PipsegError, match="mismatch"):
        evaluate_model(tiny, bad, num_classes=len(CLASSES), pad_size=65)


# --- pipseg predict ------------------------------------------------------------------------------


def write_inputs(folder: Path) -> None:
    rng = np.random.default_rng(5)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "good.png")
    Image.fromarray(rng.integers(0, 256, (24, 36), dtype=np.uint8), "L").save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 28, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (22, 26), dtype=np.uint16)).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40 wide x 30 high, shown 30 x 40
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")


def test_cli_predict_folder(tmp_path: Path, tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPSEG_CHECKPOINT", raising=False)
    write_inputs(tmp_path / "in")
    ckpt = save_checkpoint(tiny, tmp_path / "tiny.pt")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(out), "--pad-size", "65"]
    result = runner.invoke(app, args + ["--overlay", "--save-probs", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "broken.jpg" in result.output
    sizes = {"good": (30, 40), "gray": (24, 36), "rgba": (20, 28), "deep16": (22, 26), "rotated": (40, 30)}
    for stem, hw in sizes.items():
        label = read_label(out / f"{stem}.png")
        assert label.shape == hw and label.max() < len(CLASSES)
        width, height = Image.open(out / f"{stem}.overlay.png").size  # the legend beside the image
        assert height >= hw[0] and width > hw[1]
        with np.load(out / f"{stem}.npz") as npz:
            assert npz["probs"].shape == (len(CLASSES), *hw) and npz["probs"].dtype == np.float16
    assert not (out / "broken.png").exists()

    # The CLI output equals argmax of predict_probs on the same decoded image.
    image = np.asarray(Image.open(tmp_path / "in" / "good.png").convert("RGB"))
    expected = predict_probs(tiny, image, pad_size=65).argmax(0).numpy()
    np.testing.assert_array_equal(read_label(out / "good.png"), expected)

    # Existing outputs are skipped, and replaced with --overwrite.
    (out / "good.png").write_bytes(b"sentinel")
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 1 and "0 written, 5 already there" in rerun.output, rerun.output
    assert (out / "good.png").read_bytes() == b"sentinel"
    again = runner.invoke(app, args + ["--overwrite"])
    assert again.exit_code == 1 and "5 written" in again.output, again.output
    np.testing.assert_array_equal(read_label(out / "good.png"), expected)

    # Outputs of other settings are never passed off as CRF results.
    mixed = runner.invoke(app, args + ["--crf"])
    assert mixed.exit_code == 2 and "other settings" in mixed.output and "crf" in mixed.output
    np.testing.assert_array_equal(read_label(out / "good.png"), expected)


def test_cli_predict_refuses_to_overwrite_inputs(tmp_path: Path, tiny: torch.nn.Module) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "x.png")
    ckpt = save_checkpoint(tiny, tmp_path / "tiny.pt")
    result = runner.invoke(app, ["predict", str(folder), "-c", str(ckpt), "--out", str(folder), "--pad-size", "17"])
    assert result.exit_code == 2 and "overwrite an input" in result.output
    assert np.asarray(Image.open(folder / "x.png")).ndim == 3


def test_cli_predict_without_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPSEG_CHECKPOINT", raising=False)
    result = runner.invoke(app, ["predict", str(tmp_path)])
    assert result.exit_code == 2
    assert "no checkpoint given" in result.output and "PIPSEG_CHECKPOINT" in result.output


def test_collect_inputs_names(tmp_path: Path) -> None:
    for sub in ("a", "b", "a/deep"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / sub / "x.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a" / "x.jpg")
    (tmp_path / "list.txt").write_text("a/x.png\nb/x.png\n")
    folder = {i.key for i in collect_inputs([tmp_path / "a"])}
    assert folder == {"x.png", "x.jpg", "deep/x"}
    files = {i.key for i in collect_inputs([tmp_path / "list.txt"])}
    assert files == {"a/x", "b/x"}
    with pytest.raises(PipsegError, match="not found"):
        collect_inputs([tmp_path / "missing_folder"])


def test_authors_checkpoint_predicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    vgg = build_model("vgg16_largefov", 21)
    torch.save({f"module.{k}": v for k, v in vgg.state_dict().items()}, tmp_path / "authors.pth")
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "im.jpg")
    monkeypatch.setenv("PIPSEG_CHECKPOINT", str(tmp_path / "authors.pth"))  # via the environment
    result = runner.invoke(app, ["predict", str(tmp_path / "im.jpg"), "--out", str(tmp_path / "o"),
                                 "--pad-size", "33", "--overlay"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_label(tmp_path / "o" / "im.png").shape == (20, 30)
    assert len(VOC_CLASSES) == 21


def test_evaluate_model_shards_across_ranks(tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipseg.evaluate
    from pipseg.metrics import ConfusionMatrix

    rng = np.random.default_rng(7)
    samples = [(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), rng.integers(0, len(CLASSES), (20, 24)), str(i))
               for i in range(5)]  # fmt: skip
    reduced: list[torch.Tensor] = []
    monkeypatch.setattr(ConfusionMatrix, "reduce_from_all_processes", lambda self: reduced.append(self.matrix.clone()))
    for rank in (0, 1):
        monkeypatch.setattr(pipseg.evaluate, "_dist_rank_world", lambda rank=rank: (rank, 2))
        totals: list[int | None] = []
        evaluate_model(tiny, samples, num_classes=len(CLASSES), pad_size=65,
                       progress=lambda d, t, seen=totals: seen.append(t))  # fmt: skip
        share = 3 if rank == 0 else 2  # this rank's share of the 5 images
        assert totals == [share] * share
    monkeypatch.setattr(pipseg.evaluate, "_dist_rank_world", lambda: (0, 1))
    full = ConfusionMatrix(len(CLASSES))
    for image, label, _ in samples:
        full.update(predict_probs(tiny, image, pad_size=65).argmax(0), torch.from_numpy(label))
    assert len(reduced) == 2 and torch.equal(reduced[0] + reduced[1], full.matrix)
    assert reduced[0].sum() == 3 * 20 * 24


def test_cli_predict_crf_is_dense_crf(tmp_path: Path, tiny: torch.nn.Module) -> None:
    from pipseg.crf import DenseCRF

    image = np.random.default_rng(8).integers(0, 256, (26, 34, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "im.png")
    ckpt = save_checkpoint(tiny, tmp_path / "tiny.pt")
    result = runner.invoke(app, ["predict", str(tmp_path / "im.png"), "-c", str(ckpt), "--out", str(tmp_path / "o"),
                                 "--pad-size", "65", "--crf"])  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = DenseCRF()(image, predict_probs(tiny, image, pad_size=65).numpy())
    np.testing.assert_array_equal(read_label(tmp_path / "o" / "im.png"), expected)


def test_predict_pads_as_the_checkpoint_was_evaluated(tmp_path: Path, tiny: torch.nn.Module) -> None:
    image = np.random.default_rng(9).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "im.png")
    inputs = collect_inputs([tmp_path / "im.png"])
    ckpt = save_checkpoint(tiny, tmp_path / "tiny.pt", config={"eval": {"pad_size": 65}})
    at_65 = predict_probs(tiny, image, pad_size=65).argmax(0).numpy()
    at_513 = predict_probs(tiny, image, pad_size=513).argmax(0).numpy()
    assert (at_65 != at_513).any(), "the image must tell the two paddings apart"

    predict_files(tiny, inputs, tmp_path / "o", checkpoint=ckpt)
    np.testing.assert_array_equal(read_label(tmp_path / "o" / "im.png"), at_65)
    assert json.loads((tmp_path / "o" / ".pipseg-predict.json").read_text())["pad_size"] == 65
    # eval at the checkpoint's pad size scores predict's output as a perfect match
    scores = evaluate_model(tiny, [(image, at_65, "im")], num_classes=len(CLASSES), pad_size=checkpoint_pad_size(ckpt))
    assert scores["pixel_accuracy"] == 1.0

    predict_files(tiny, inputs, tmp_path / "o513", checkpoint=ckpt, pad_size=513)  # told otherwise
    np.testing.assert_array_equal(read_label(tmp_path / "o513" / "im.png"), at_513)
    predict_files(tiny, inputs, tmp_path / "none")  # no checkpoint: the paper's 513
    np.testing.assert_array_equal(read_label(tmp_path / "none" / "im.png"), at_513)


def test_checkpoint_pad_size(tmp_path: Path, tiny: torch.nn.Module) -> None:
    assert checkpoint_pad_size(save_checkpoint(tiny, tmp_path / "a.pt", {"eval": {"pad_size": 97}})) == 97
    assert checkpoint_pad_size(save_checkpoint(tiny, tmp_path / "b.pt")) == 513  # no config recorded
    torch.save({"fc8.weight": torch.zeros(2, 3, 1, 1)}, tmp_path / "state.pth")  # a bare state dict
    assert checkpoint_pad_size(tmp_path / "state.pth") == 513
    with pytest.raises(PipsegError, match=r"eval.pad_size is 'big'.*--pad-size"):
        checkpoint_pad_size(save_checkpoint(tiny, tmp_path / "c.pt", {"eval": {"pad_size": "big"}}))


# --- large images: sliding window and --max-side ---------------------------------------------


class PixelModel(torch.nn.Module):
    """Output stride 1, receptive field 1 pixel: its prediction at a pixel depends on that pixel
    only, so any tiling must reproduce the whole-image prediction exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, len(CLASSES), 1)
        torch.nn.init.normal_(self.conv.weight, std=3.0)
        self.input_convention = TORCHVISION_RGB
        self.name, self.num_classes = "pixel", len(CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def pixel_oracle(model: PixelModel, image: np.ndarray) -> np.ndarray:
    """softmax(W x + b) per pixel, from the convention's mean / std, in float64."""
    conv = model.input_convention
    x = (image.astype(np.float64) / 255.0 - np.array(conv.mean)) / np.array(conv.std)
    w = model.conv.weight.detach().double().numpy()[:, :, 0, 0]
    logits = np.einsum("hwc,kc->khw", x, w) + model.conv.bias.detach().double().numpy()[:, None, None]
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def test_tile_starts_cover_with_overlap() -> None:
    from pipseg.inference import tile_starts

    for length, tile, overlap in [(100, 40, 10), (41, 40, 5), (40, 40, 0), (1000, 513, 128), (7, 40, 10)]:
        starts = tile_starts(length, tile, overlap)
        ends = [s + min(tile, length) for s in starts]
        assert starts[0] == 0 and ends[-1] == length and all(0 <= s for s in starts)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))  # overlap kept
        covered = np.zeros(length, bool)
        for s, e in zip(starts, ends, strict=True):
            covered[s:e] = True
        assert covered.all()


def test_tiled_prediction_equals_whole_image_for_a_position_independent_model() -> None:
    from pipseg.inference import predict_probs_tiled

    model = PixelModel().eval()
    image = np.random.default_rng(11).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    expected = pixel_oracle(model, image)
    tiled = predict_probs_tiled(model, image, tile=64, overlap=20, pad_size=64, batch_size=3)
    assert tiled.shape == (len(CLASSES), 150, 230)
    np.testing.assert_allclose(tiled.numpy(), expected, atol=1e-5)
    with pytest.raises(PipsegError, match="--overlap"):
        predict_probs_tiled(model, image, tile=64, overlap=64)


def test_tiled_prediction_of_a_cnn_matches_inside_tiles(tiny: torch.nn.Module) -> None:
    """A real network: the tiled probabilities are a proper average (sum to 1) of the windows'
    own predictions, and a pixel covered by a single window gets exactly that window's output."""
    from pipseg.inference import predict_probs_tiled

    image = np.random.default_rng(12).integers(0, 256, (60, 150, 3), dtype=np.uint8)
    tiled = predict_probs_tiled(tiny, image, tile=60, overlap=16, pad_size=65)
    torch.testing.assert_close(tiled.sum(0), torch.ones(60, 150))
    first = predict_probs(tiny, np.ascontiguousarray(image[:, :60]), pad_size=65)
    torch.testing.assert_close(tiled[:, :, :40], first[:, :, :40])  # x < 44: only the first window


def test_max_side_predicts_downscaled_and_returns_the_input_size() -> None:
    from pipseg.inference import fit_max_side, predict_image

    model = PixelModel().eval()
    image = np.zeros((90, 300, 3), np.uint8)
    image[:, :150] = (200, 30, 30)
    image[:, 150:] = (20, 40, 220)
    assert fit_max_side(90, 300, 100) == (30, 100) and fit_max_side(90, 300, 500) == (90, 300)
    pred = predict_image(model, image, max_side=100, pad_size=65)
    assert pred.probs.shape[-2:] == (30, 100) and pred.size == (90, 300)
    label = pred.label()
    assert label.shape == (90, 300)
    left, right = (int(pixel_oracle(model, image[:1, c : c + 1]).argmax(0)[0, 0]) for c in (0, 299))
    assert left != right, "the two colours must be told apart"
    assert (label[:, :148] == left).all() and (label[:, 152:] == right).all()
    same = predict_image(model, image, max_side=300, pad_size=65).label()
    np.testing.assert_array_equal(same, pixel_oracle(model, image).argmax(0))


def test_cli_predict_large_options(tmp_path: Path, tiny: torch.nn.Module) -> None:
    image = np.random.default_rng(13).integers(0, 256, (70, 130, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    ckpt = save_checkpoint(tiny, tmp_path / "tiny.pt", config={"eval": {"pad_size": 65}})
    base = ["predict", str(tmp_path / "big.png"), "-c", str(ckpt), "--device", "cpu"]
    tiled = runner.invoke(app, [*base, "--out", str(tmp_path / "t"), "--tile", "64", "--overlap", "16"])
    assert tiled.exit_code == 0, tiled.output
    from pipseg.inference import predict_probs_tiled

    expected = predict_probs_tiled(tiny, image, tile=64, overlap=16, pad_size=65).argmax(0).numpy()
    np.testing.assert_array_equal(read_label(tmp_path / "t" / "big.png"), expected)
    small = runner.invoke(app, [*base, "--out", str(tmp_path / "m"), "--max-side", "40", "--overlay", "--no-legend"])
    assert small.exit_code == 0, small.output
    assert read_label(tmp_path / "m" / "big.png").shape == (70, 130)
    assert Image.open(tmp_path / "m" / "big.overlay.png").size == (130, 70)  # --no-legend: the image's size
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "p"), "--max-side", "40", "--save-probs"])
    assert refused.exit_code == 2 and "--max-side" in refused.output


def test_evaluate_model_with_tiles_scores_the_tiled_labels() -> None:
    from pipseg.inference import LargeImages

    model = PixelModel().eval()
    rng = np.random.default_rng(14)
    samples = [(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8), rng.integers(0, 4, (50, 90)).astype(np.uint8), "a")]
    truth = pixel_oracle(model, samples[0][0]).argmax(0)
    tiled = evaluate_model(model, samples, num_classes=4, pad_size=33, large=LargeImages(tile=32, overlap=8))
    matrix = np.zeros((4, 4), np.int64)
    np.add.at(matrix, (samples[0][1].ravel(), truth.ravel()), 1)
    assert tiled["confusion"] == matrix.tolist()


def test_streamed_tiled_labels_equal_the_argmax_of_the_averaged_probabilities(tiny: torch.nn.Module) -> None:
    from pipseg.inference import predict_label_tiled, predict_probs_tiled

    image = np.random.default_rng(15).integers(0, 256, (170, 90, 3), dtype=np.uint8)
    for tile, overlap in [(48, 12), (64, 30), (100, 0)]:
        probs = predict_probs_tiled(tiny, image, tile=tile, overlap=overlap, pad_size=65)
        labels = predict_label_tiled(tiny, image, tile=tile, overlap=overlap, pad_size=65)
        top2 = probs.topk(2, dim=0).values
        clear = (top2[0] - top2[1] > 1e-5).numpy()  # ties may break either way after the division
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(labels[clear], probs.argmax(0).numpy()[clear])
