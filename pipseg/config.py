"""The run configuration: pydantic models loaded from YAML, with ``--set key=value`` overrides.

The defaults of these models are the paper's recipe (METHOD.md section 3); the files in
``configs/`` only state what differs from them, so shared values live in one place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipseg.errors import PipsegError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Named sources, plus `refine-<k>` registered by `pipseg refine` round k.
LabelSource = Annotated[str, Field(pattern=r"^(gt|sdi|wssl|box|grabcut|crf|consensus|sam|refine-[1-9][0-9]*)$")]
ModelName = Literal["vgg16_largefov", "deeplabv2_resnet101", "tiny_deeplab"]  # = models.MODEL_NAMES
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def pipseg_home() -> Path:
    """Where pipseg keeps downloaded weights by default (``$PIPSEG_HOME`` or ``~/.cache/pipseg``)."""
    return Path(os.environ.get("PIPSEG_HOME", "~/.cache/pipseg")).expanduser()


def default_weights_dir() -> Path:
    """Folder that ``pipseg download`` fills with weight files and ``train`` reads them from."""
    return pipseg_home() / "weights"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the dataset lives and how training crops are drawn from it."""

    root: Path = Path("~/data/VOCdevkit/VOC2012")
    prepared: Path | None = Field(None, description="output of `pipseg prepare`; default <root>/pipseg")
    classes: list[str] | None = Field(
        None,
        min_length=2,
        description="class names, background first; unset: the prepared manifest's list "
        "(`pipseg prepare` records it), so it is given once",
    )
    train_split: str = "train_aug"
    val_split: str = "val"
    label_source: LabelSource = "sdi"
    crop_size: PositiveInt = 321
    scales: list[PositiveFloat] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5], min_length=1)
    flip: bool = True
    workers: Annotated[int, Field(ge=0)] = 4
    skip_unknown_classes: bool = False
    # How boxes follow the random scale, crop and flip (docs/METHOD.md section 6).
    box_geometry: Literal["exact", "published"] = Field(
        "exact",
        description="'exact' (pipseg: mirror flip, enclosing scaling, drop boxes outside the "
        "crop) or 'published' (the authors' code: x -> crop - x, int(x * s), keep clipped lines)",
    )

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        normalised = [n.strip().lower() for n in names]
        if len(set(normalised)) != len(normalised):
            raise ValueError("class names must be unique (compared case-insensitively)")
        if len(names) > 255:
            raise ValueError("at most 255 classes fit in an 8-bit label map (255 = ignore)")
        return names

    @property
    def prepared_dir(self) -> Path:
        """The folder `pipseg prepare` writes to (resolved default)."""
        return (self.prepared or self.root / "pipseg").expanduser()


class ModelConfig(_Section):
    """Which network, and what it starts from."""

    name: ModelName = "vgg16_largefov"
    init: str = Field(
        "imagenet",
        description="'imagenet' (torchvision's weights in weights_dir, `pipseg download`), "
        "'deeplab-init' (vgg16_largefov: the authors' DeepLab-LargeFOV init file in weights_dir, "
        "docs/METHOD.md section 5), 'none', or a checkpoint / weight file (another class list: "
        "everything but the classifier is loaded)",
    )
    weights_dir: Path = Field(default_factory=default_weights_dir)


class LossConfig(_Section):
    """PIP loss (METHOD.md section 2) or plain cross-entropy."""

    kind: Literal["pip", "ce"] = "pip"
    lamb: Annotated[float, Field(ge=0)] = 0.2
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    tau: Annotated[float, Field(ge=0)] = 5.0
    radius: Annotated[int, Field(ge=0)] = 5
    sigma: PositiveFloat = 2.0
    eps: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="not used, accepted so older configs load: the box term needs no clamp "
        "(docs/METHOD.md section 2)",
    )
    # Box-line extremes: "auto" = compiled (Numba) on CPU, PyTorch on GPU; "dense" = PyTorch always.
    box_search: Literal["auto", "dense"] = "auto"
    pairwise: float = Field(
        0.0,
        ge=0,
        description="weight of a colour-affinity term inside boxes added to the loss (BoxInst's "
        "pairwise term; 0 = off, see BENCHMARKS.md)",
    )


class OptimConfig(_Section):
    """SGD with momentum, poly schedule per iteration, iteration-based stopping."""

    iters: PositiveInt = 20000
    batch_size: PositiveInt = 30
    lr: PositiveFloat = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    poly_power: Annotated[float, Field(ge=0)] = 0.9
    classifier_lr_mult: PositiveFloat = 1.0
    accumulate: PositiveInt = 1


class RuntimeConfig(_Section):
    """Device, precision, logging, checkpointing."""

    device: str = Field("auto", description="auto, cpu, cuda (cuda:LOCAL_RANK under torchrun) or cuda:N")
    out_dir: Path = Path("runs/default")
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    seed: Annotated[int, Field(ge=0)] = 0
    log_every: PositiveInt = 20
    val_every: PositiveInt = 2000
    ckpt_every: PositiveInt = 1000
    val_max_images: PositiveInt | None = None
    tensorboard: bool = Field(False, description="also write TensorBoard scalars to out_dir/tensorboard")

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        name = name.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
            raise ValueError(f"'{name}' is not a device; use auto, cpu, cuda or cuda:N")
        return name


class EvalConfig(_Section):
    """Test recipe (METHOD.md section 4)."""

    pad_size: PositiveInt = 513
    batch_size: PositiveInt = 1
    # Where DenseCRF runs (docs/METHOD.md section 6).
    crf_canvas: Literal["image", "padded"] = Field(
        "image",
        description="'image' (crop the probabilities to the image, then CRF) or 'padded' (the "
        "published code: CRF on the padded canvas, image padded with black, then crop)",
    )


class CRFConfig(_Section):
    """DenseCRF parameters (METHOD.md section 4)."""

    iters: PositiveInt = 10
    gauss_sxy: PositiveFloat = 3.0
    gauss_weight: PositiveFloat = 3.0
    bilateral_sxy: PositiveFloat = 120.0
    bilateral_srgb: PositiveFloat = 5.0
    bilateral_weight: PositiveFloat = 5.0


class Config(_Section):
    """A whole run: data, model, loss, optimisation, runtime, evaluation and CRF."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    crf: CRFConfig = Field(default_factory=CRFConfig)

    @model_validator(mode="after")
    def _check_batch(self) -> Config:
        if self.optim.batch_size % self.optim.accumulate:
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must be divisible by "
                f"optim.accumulate ({self.optim.accumulate})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML-friendly types."""
        return self.model_dump(mode="json")


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against `pipseg config show`)"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and a YAML-typed value."""
    if "=" not in text:
        raise PipsegError(f"--set {text}: expected KEY=VALUE, e.g. --set optim.lr=0.0005")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise PipsegError(f"--set {text}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key=value`` override into the nested dict ``raw`` (in place) and return it."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PipsegError(f"--set {text}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into one clear line."""
    if path.is_dir():
        raise PipsegError(f"{path}: is a folder; expected a YAML config file such as configs/sdi.yaml")
    if not path.is_file():
        raise PipsegError(f"{path}: config file not found (see configs/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise PipsegError(f"{path}: malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PipsegError(f"{path}: cannot read the config: {e}") from None
    if not isinstance(raw, dict | None):
        raise PipsegError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    if not raw:
        raise PipsegError(
            f"{path}: the config file is empty; start from one in configs/ (e.g. configs/box.yaml) "
            "and set at least data.root or data.prepared"
        )
    return raw


def validate_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a nested dict into a `Config`, raising `PipsegError` with one line per problem."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise PipsegError(_format_errors(source, e)) from None


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw = read_yaml(Path(path)) if path is not None else {}
    apply_overrides(raw, list(overrides or []))
    return validate_config(raw, str(path) if path is not None else "<defaults>")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
