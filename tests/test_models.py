"""Models: output sizes, the authors' VGG layout, ImageNet conversion, checkpoint loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pipseg.config import VOC_CLASSES
from pipseg.errors import PipsegError
from pipseg.models import (
    CAFFE_BGR,
    CHECKPOINT_FORMAT,
    MODEL_NAMES,
    TORCHVISION_RGB,
    build_initialised_model,
    build_model,
    imagenet_weight_file,
    imagenet_weights,
    init_from_imagenet,
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    prepare_images,
)

# METHOD.md section 5, written out layer by layer ("conv" = conv + ReLU).
PIP_LARGEFOV = (
    ["conv"] * 2 + ["maxpool"] + ["conv"] * 2 + ["maxpool"] + ["conv"] * 3 + ["maxpool"]
    + ["conv"] * 3 + ["maxpool"] + ["conv"] * 3 + ["maxpool", "avgpool"]
    + ["conv", "dropout", "conv", "dropout", "fc8"]
)  # fmt: skip


def expand_layers(spec: list[str]) -> list[str]:
    """One entry per nn.Sequential index: a conv is followed by its ReLU, fc8 stands alone."""
    out: list[str] = []
    for layer in spec:
        out += ["conv", "relu"] if layer == "conv" else ["conv" if layer == "fc8" else layer]
    return out


def out_size(h: int) -> int:
    """Three 3x3 / stride 2 / padding 1 reductions, by the conv arithmetic floor((h + 2p - k) / s) + 1."""
    for _ in range(3):
        h = (h + 2 - 3) // 2 + 1
    return h


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads run up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vgg21() -> nn.Module:
    return build_model("vgg16_largefov", 21)


@pytest.fixture(scope="module")
def resnet5() -> nn.Module:
    return build_model("deeplabv2_resnet101", 5)


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_and_unknown_name() -> None:
    assert set(MODEL_NAMES) == {"vgg16_largefov", "deeplabv2_resnet101", "tiny_deeplab"}
    with pytest.raises(PipsegError, match="vgg16_largefov.*deeplabv2_resnet101.*tiny_deeplab"):
        build_model("vgg19", 21)
    with pytest.raises(PipsegError, match="num_classes"):
        build_model("tiny_deeplab", 1)


def test_imagenet_weight_files() -> None:
    assert imagenet_weight_file("vgg16_largefov") == "vgg16-397923af.pth"
    assert imagenet_weight_file("deeplabv2_resnet101") == "resnet101-63fe2227.pth"
    assert imagenet_weight_file("tiny_deeplab") is None


def test_every_imagenet_file_is_a_download() -> None:
    """The registry's download name fetches exactly the file it names (the catalogue is the
    other side of the contract: `pipseg download NAME` writes ASSETS[NAME].filename)."""
    from pipseg.download import ASSETS

    records = [imagenet_weights(name) for name in MODEL_NAMES]
    assert sum(r is not None for r in records) == 2
    for record in filter(None, records):
        assert ASSETS[record.download].filename == record.file
        assert ASSETS[record.download].location == "weights"


def test_init_from_a_weight_file_records_its_digest(tmp_path) -> None:  # noqa: ANN001
    import hashlib

    from pipseg.config import ModelConfig

    source = build_model("tiny_deeplab", 3)
    torch.save(source.state_dict(), tmp_path / "start.pt")
    model, record = build_initialised_model(ModelConfig(name="tiny_deeplab", init=str(tmp_path / "start.pt")), 3)
    assert record == {"kind": "file", "file": str(tmp_path / "start.pt"),
                      "sha256": hashlib.sha256((tmp_path / "start.pt").read_bytes()).hexdigest()}  # fmt: skip
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    scratch, record = build_initialised_model(ModelConfig(name="tiny_deeplab", init="none"), 3)
    assert record["kind"] == "none" and scratch.num_classes == 3
    with pytest.raises(PipsegError, match="model.init: tiny_deeplab has no ImageNet weights"):
        build_initialised_model(ModelConfig(name="tiny_deeplab", init="imagenet"), 3)
    with pytest.raises(PipsegError, match="model.init: .*no such file"):
        build_initialised_model(ModelConfig(name="tiny_deeplab", init=str(tmp_path / "nope.pt")), 3)


def test_model_attributes(vgg21: nn.Module, resnet5: nn.Module) -> None:
    tiny = build_model("tiny_deeplab", 3)
    for model, name, n in (
        (vgg21, "vgg16_largefov", 21),
        (resnet5, "deeplabv2_resnet101", 5),
        (tiny, "tiny_deeplab", 3),
    ):
        assert model.name == name and model.num_classes == n and model.output_stride == 8
        assert model.input_convention == TORCHVISION_RGB
        head = list(model.classifier_parameters())
        body = list(model.backbone_parameters())
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert head and body
        assert {id(p) for p in head}.isdisjoint(id(p) for p in body)
        assert {id(p) for p in head + body} == {id(p) for p in trainable}
        assert len(head) + len(body) == len(trainable)


# --- output size --------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(321, 321), (513, 513), (113, 97), (96, 129), (1, 8), (9, 17)])
def test_tiny_output_stride_8(hw: tuple[int, int]) -> None:
    model = build_model("tiny_deeplab", 4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 4, out_size(hw[0]), out_size(hw[1]))


def test_vgg_321_gives_41(vgg21: nn.Module) -> None:
    assert out_size(321) == 41 and out_size(513) == 65
    assert all(out_size(h) == math.ceil(h / 8) for h in range(1, 600))  # the documented form
    with torch.no_grad():
        assert vgg21.eval()(torch.randn(1, 3, 321, 321)).shape == (1, 21, 41, 41)
        assert vgg21(torch.randn(1, 3, 65, 70)).shape == (1, 21, 9, 9)


def test_resnet_output_stride_8(resnet5: nn.Module) -> None:
    with torch.no_grad():
        out = resnet5.eval()(torch.randn(1, 3, 129, 121))
    assert out.shape == (1, 5, 17, 16) == (1, 5, out_size(129), out_size(121))


# --- VGG layout -----------------------------------------------------------------------------


def test_vgg_layout_matches_pip_md(vgg21: nn.Module) -> None:
    layers = expand_layers(PIP_LARGEFOV)
    assert len(layers) == 39 and layers[38] == "conv"
    conv_idx = [i for i, kind in enumerate(layers) if kind == "conv"]
    expected = {f"features.{i}.{p}" for i in conv_idx for p in ("weight", "bias")}
    assert set(vgg21.state_dict()) == expected
    kinds = {
        "conv": nn.Conv2d,
        "relu": nn.ReLU,
        "maxpool": nn.MaxPool2d,
        "avgpool": nn.AvgPool2d,
        "dropout": nn.Dropout2d,
    }
    assert [type(m) for m in vgg21.features] == [kinds[k] for k in layers]
    convs = [vgg21.features[i] for i in conv_idx]
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6 + [
        1024,
        1024,
        21,
    ]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3 + [12, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 14 + [1, 1]
    pools = [m for m in vgg21.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [
        (3, 1, 1)
    ] * 2
    fc8 = vgg21.features[38]
    assert fc8.bias.abs().max() == 0
    assert 0.009 < fc8.weight.std().item() < 0.011 and abs(fc8.weight.mean().item()) < 1e-3
    assert [id(p) for p in vgg21.classifier_parameters()] == [id(fc8.weight), id(fc8.bias)]


# --- ImageNet initialisation -------------------------------------------------------------------


def fake_torchvision_state(builder, path) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """A random torchvision state dict, stored in fp16 to keep the file small (fp16 -> fp32 is exact)."""
    torch.manual_seed(0)
    state = {
        k: v.half() if v.is_floating_point() else v
        for k, v in builder(weights=None).state_dict().items()
    }
    torch.save(state, path)
    return state


def test_vgg_init_from_torchvision(tmp_path) -> None:  # noqa: ANN001
    src = fake_torchvision_state(torchvision.models.vgg16, tmp_path / "vgg16.pth")
    model = build_model("vgg16_largefov", 21)
    model.input_convention = CAFFE_BGR
    fc8_before = model.features[38].weight.clone()
    init_from_imagenet(model, tmp_path / "vgg16.pth")
    ours = model.state_dict()
    for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):
        for p in ("weight", "bias"):
            assert torch.equal(ours[f"features.{i}.{p}"], src[f"features.{i}.{p}"].float())
    keep, taps = torch.arange(0, 4096, 4), torch.tensor([0, 3, 6])
    fc6 = src["classifier.0.weight"].float().reshape(4096, 512, 7, 7)
    fc6 = fc6.index_select(0, keep).index_select(2, taps).index_select(3, taps)
    assert torch.equal(ours["features.32.weight"], fc6)
    assert torch.equal(ours["features.32.bias"], src["classifier.0.bias"].float()[keep])
    fc7 = src["classifier.3.weight"].float().index_select(0, keep).index_select(1, keep)
    assert torch.equal(ours["features.35.weight"], fc7.reshape(1024, 1024, 1, 1))
    assert torch.equal(ours["features.35.bias"], src["classifier.3.bias"].float()[keep])
    assert torch.equal(ours["features.38.weight"], fc8_before)
    assert model.input_convention == TORCHVISION_RGB

    del src["features.28.bias"]
    torch.save(src, tmp_path / "broken.pth")
    with pytest.raises(PipsegError, match=r"features\.28\.bias"):
        init_from_imagenet(model, tmp_path / "broken.pth")


def test_resnet_frozen_bn_and_init(tmp_path, resnet5: nn.Module) -> None:  # noqa: ANN001
    bns = [m for m in resnet5.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 104
    resnet5.train()
    assert resnet5.training and all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    running = bns[0].running_mean.clone()
    resnet5(
        torch.randn(1, 3, 33, 33)
    ).sum().backward()  # train-mode step leaves the statistics alone
    assert torch.equal(bns[0].running_mean, running)
    assert all(bn.weight.grad is None for bn in bns)
    resnet5.zero_grad(set_to_none=True)
    for conv in resnet5.aspp.convs:
        assert conv.dilation[0] == conv.padding[0] and conv.bias.abs().max() == 0
    assert [c.dilation[0] for c in resnet5.aspp.convs] == [6, 12, 18, 24]

    src = fake_torchvision_state(torchvision.models.resnet101, tmp_path / "r101.pth")
    aspp_before = resnet5.aspp.convs[0].weight.clone()
    init_from_imagenet(resnet5, tmp_path / "r101.pth")
    ours = resnet5.state_dict()
    copied = [k for k in src if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(copied) > 500
    for k in copied:
        assert torch.equal(ours[k], src[k].float()), k
    assert torch.equal(resnet5.aspp.convs[0].weight, aspp_before)
    assert resnet5.input_convention == TORCHVISION_RGB

    del src["layer3.22.bn3.running_var"]
    torch.save(src, tmp_path / "broken.pth")
    with pytest.raises(PipsegError, match=r"layer3\.22\.bn3\.running_var"):
        init_from_imagenet(resnet5, tmp_path / "broken.pth")


def test_tiny_has_no_imagenet_weights(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(PipsegError, match="model.init: none"):
        init_from_imagenet(build_model("tiny_deeplab", 3), tmp_path / "whatever.pth")


# --- loading checkpoints and state dicts ------------------------------------------------------


def test_authors_layout_with_module_prefix(tmp_path, vgg21: nn.Module) -> None:  # noqa: ANN001
    state = {f"module.{k}": torch.randn_like(v) for k, v in vgg21.state_dict().items()}
    torch.save(state, tmp_path / "authors.pth")
    model = load_weights(build_model("vgg16_largefov", 21), tmp_path / "authors.pth")
    assert model.input_convention == CAFFE_BGR
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[f"module.{k}"])

    model, meta = model_from_checkpoint(tmp_path / "authors.pth")
    assert not model.training
    assert meta["model_name"] == "vgg16_largefov" and meta["num_classes"] == 21
    assert meta["classes"] == list(VOC_CLASSES) and meta["input_convention"] == CAFFE_BGR
    assert meta["iteration"] is None
    assert torch.equal(model.features[38].weight, state["module.features.38.weight"])


def test_authors_layout_other_class_count(tmp_path) -> None:  # noqa: ANN001
    state = build_model("vgg16_largefov", 5).state_dict()
    torch.save(state, tmp_path / "five.pth")
    model, meta = model_from_checkpoint(tmp_path / "five.pth")
    assert (
        meta["num_classes"] == 5
        and len(meta["classes"]) == 5
        and meta["classes"][0] != "background"
    )
    assert model.features[38].out_channels == 5


def test_strict_loading_names_the_key(vgg21: nn.Module) -> None:
    good = vgg21.state_dict()
    missing = {k: v for k, v in good.items() if k != "features.35.bias"}
    with pytest.raises(PipsegError, match=r"missing key 'features\.35\.bias'"):
        load_weights(build_model("vgg16_largefov", 21), missing)
    misshaped = dict(good, **{"features.38.weight": torch.zeros(5, 1024, 1, 1)})
    with pytest.raises(PipsegError, match=r"features\.38\.weight.*\(5, 1024, 1, 1\)"):
        load_weights(build_model("vgg16_largefov", 21), misshaped)
    extra = dict(good, **{"features.40.weight": torch.zeros(1)})
    with pytest.raises(PipsegError, match=r"unexpected key 'features\.40\.weight'"):
        load_weights(build_model("vgg16_largefov", 21), extra)


def pipseg_checkpoint(model: nn.Module, classes: list[str], convention=CAFFE_BGR) -> dict:  # noqa: ANN001
    return {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_name": model.name,
        "num_classes": model.num_classes, "classes": classes,
        "input_convention": convention.as_dict(), "config": {}, "iteration": 123,
        "optimizer": {}, "scaler": None, "rng": {}, "best_miou": None, "metrics": None,
        "label_source": "box", "init": {"file": None, "sha256": None},
    }  # fmt: skip


def test_pipseg_checkpoint_round_trip(tmp_path) -> None:  # noqa: ANN001
    model = build_model("tiny_deeplab", 3)
    model.train()(torch.randn(2, 3, 33, 33))  # move BatchNorm statistics off their init
    torch.save(pipseg_checkpoint(model, ["bg", "a", "b"]), tmp_path / "ckpt.pt")
    loaded, meta = model_from_checkpoint(tmp_path / "ckpt.pt")
    assert meta == {
        "model_name": "tiny_deeplab", "num_classes": 3, "classes": ["bg", "a", "b"],
        "input_convention": CAFFE_BGR, "iteration": 123, "source": "pipseg",
    }  # fmt: skip
    assert loaded.input_convention == CAFFE_BGR and not loaded.training
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))

    fresh = load_weights(build_model("tiny_deeplab", 3), tmp_path / "ckpt.pt")
    assert fresh.input_convention == CAFFE_BGR
    with pytest.raises(PipsegError, match="tiny_deeplab"):
        load_weights(build_model("vgg16_largefov", 3), tmp_path / "ckpt.pt")
    again = load_weights(
        build_model("tiny_deeplab", 3), tmp_path / "ckpt.pt", input_convention=TORCHVISION_RGB
    )
    assert again.input_convention == TORCHVISION_RGB
    bad = dict(
        pipseg_checkpoint(model, ["bg", "a", "b"]), input_convention={"name": "x", "bgr": True}
    )
    with pytest.raises(PipsegError, match="input_convention"):
        load_weights(build_model("tiny_deeplab", 3), bad)


class NotATensor:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("this must never run",))


def test_load_checkpoint_rejects_bad_files(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(PipsegError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"model": {"w": torch.zeros(1)}, "evil": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(PipsegError, match="evil.pt.*refused"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(PipsegError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(PipsegError, match="list.pt.*list"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(PipsegError, match="other.pt.*not a checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "pipseg-checkpoint-v9"}, tmp_path / "future.pt")
    with pytest.raises(PipsegError, match="unsupported checkpoint format"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"a.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(PipsegError, match="foreign.pt.*neither"):
        model_from_checkpoint(tmp_path / "foreign.pt")


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", [TORCHVISION_RGB, CAFFE_BGR])
def test_prepare_images_then_forward(convention, vgg21: nn.Module) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (2, 3, 57, 49), dtype=np.uint8))
    for model in (build_model("tiny_deeplab", 21).eval(), vgg21.eval()):
        model.input_convention = convention
        with torch.no_grad():
            logits = model(prepare_images(image, model.input_convention))
        assert logits.shape == (2, 21, 8, 7) and torch.isfinite(logits).all()
    vgg21.input_convention = TORCHVISION_RGB


def test_tiny_is_scriptable_and_traceable() -> None:
    model = build_model("tiny_deeplab", 3).eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(torch.jit.script(model)(x), ref)
        traced = torch.jit.trace(model, x)
        y = torch.randn(1, 3, 57, 33)
        assert torch.allclose(traced(y), model(y))


def test_tiny_learns_one_batch() -> None:
    torch.manual_seed(0)
    model = build_model("tiny_deeplab", 3).train()
    x = torch.randn(4, 3, 48, 48)
    target = torch.zeros(4, 6, 6, dtype=torch.long)
    target[:, :3] = 1
    target[:, :, 4:] = 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
