"""The catalogue of things `pipseg download` knows: datasets, pseudo labels and ImageNet weights.

Each asset says where it comes from, how to check it and where it lands, so that `prepare` and
`train` find everything without flags: datasets under ``--dest`` (default ``~/data``) in the
layout their archives already have, weights in `pipseg.config.default_weights_dir()` under their
torchvision file names.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipseg.errors import PipsegError

Algorithm = Literal["md5", "sha256"]
_HEX_LENGTH = {"md5": 32, "sha256": 64}
_MIN_PREFIX = 8  # torchvision weight names carry the first 8 hex digits of the file's SHA-256


@dataclass(frozen=True)
class Checksum:
    """An expected digest: a full md5 / sha256, or a sha256 prefix (at least 8 hex digits)."""

    algorithm: Algorithm
    hexdigest: str

    def __post_init__(self) -> None:
        value = self.hexdigest.strip().lower()
        full = _HEX_LENGTH.get(self.algorithm)
        if full is None:
            raise PipsegError(f"checksum: unknown algorithm '{self.algorithm}'; use md5 or sha256")
        if not value or any(c not in string.hexdigits for c in value):
            raise PipsegError(f"--{self.algorithm} {self.hexdigest}: not a hexadecimal digest")
        shortest = full if self.algorithm == "md5" else _MIN_PREFIX
        if not shortest <= len(value) <= full:
            need = f"{full}" if shortest == full else f"{shortest} to {full}"
            raise PipsegError(
                f"--{self.algorithm} {self.hexdigest}: expected {need} hex digits, got {len(value)}"
            )
        object.__setattr__(self, "hexdigest", value)

    @property
    def is_prefix(self) -> bool:
        """True when only the leading digits of the digest are known."""
        return len(self.hexdigest) < _HEX_LENGTH[self.algorithm]

    @property
    def kind(self) -> str:
        """What is checked, for tables: ``md5``, ``sha256`` or ``sha256 prefix``."""
        return f"{self.algorithm} prefix" if self.is_prefix else self.algorithm

    def matches(self, actual_hexdigest: str) -> bool:
        """Whether a full digest of the same algorithm agrees with this one."""
        return actual_hexdigest.lower().startswith(self.hexdigest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


@dataclass(frozen=True)
class Asset:
    """One downloadable (or hand-placed) thing.

    ``location`` is ``"dest"`` (under ``--dest``) or ``"weights"`` (under the weights folder).
    For an archive, ``extract_to`` is the folder it is unpacked into (relative to its location)
    and ``provides`` the folder it creates there; otherwise the file itself is the result.
    A ``manual`` asset cannot be fetched by a script (Google Drive, browser pages): its text says
    where to get it, and ``provides`` where to put it.
    """

    name: str
    description: str
    filename: str
    urls: tuple[str, ...] = ()
    size: int | None = None
    checksum: Checksum | None = None
    location: Literal["dest", "weights"] = "dest"
    extract_to: str | None = None
    provides: str | None = None
    manual: str | None = None

    def base_dir(self, dest: Path, weights_dir: Path) -> Path:
        """The folder this asset's file (and its extraction) lives in."""
        return Path(weights_dir if self.location == "weights" else dest).expanduser()

    def file_path(self, dest: Path, weights_dir: Path) -> Path:
        """Where the downloaded file is kept."""
        return self.base_dir(dest, weights_dir) / self.filename

    def destination(self, dest: Path, weights_dir: Path) -> Path:
        """What the user ends up with: the extracted folder, or the file itself."""
        base = self.base_dir(dest, weights_dir)
        return base / self.provides if self.provides else base / self.filename


_VOC_ROOT = "VOCdevkit/VOC2012"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="voc2012",
            description="PASCAL VOC 2012 trainval (images, boxes, val masks)",
            filename="VOCtrainval_11-May-2012.tar",
            urls=(
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                "http://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
            ),
            size=1_999_639_040,
            checksum=Checksum("md5", "6cd6e144f989b92b3379bac3b3de84fd"),
            extract_to=".",
            provides=_VOC_ROOT,
        ),
        Asset(
            name="sbd",
            description="SBD (Hariharan et al.): the extra images of train_aug",
            filename="benchmark.tgz",
            urls=(
                "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
            ),
            size=1_419_539_633,
            checksum=Checksum("md5", "82b4d87ceb2ed10f6038a1cba92111cb"),
            extract_to=".",
            provides="benchmark_RELEASE",
        ),
        Asset(
            name="wssl",
            description="WSSL BboxCRF pseudo labels for train_aug (manual)",
            filename="SegmentationClassBboxCRF",
            provides=f"{_VOC_ROOT}/SegmentationClassBboxCRF",
            manual=(
                "get the WSSL 'BboxCRF' train_aug labels from the link on "
                "http://liangchiehchen.com/projects/Datasets.html (Google Drive, needs a browser) "
                "and extract them so the PNGs are in {destination}/"
            ),
        ),
        Asset(
            name="sdi",
            description="SDI M&G+ pseudo labels for train_aug (manual)",
            filename="VOC12_M&G+",
            provides=f"{_VOC_ROOT}/VOC12_M&G+",
            manual=(
                "get the SDI 'M&G+' train_aug labels from the 'Simple Does It' project page "
                "https://www.mpi-inf.mpg.de/departments/computer-vision-and-machine-learning/"
                "research/weakly-supervised-learning/simple-does-it-weakly-supervised-instance-"
                "and-semantic-segmentation (Google Drive, needs a browser) and extract them so "
                "the PNGs are in {destination}/"
            ),
        ),
        Asset(
            name="vgg16",
            description="torchvision VGG-16 ImageNet weights (vgg16_largefov init)",
            filename="vgg16-397923af.pth",
            urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
            size=553_433_881,
            checksum=Checksum("sha256", "397923af"),
            location="weights",
        ),
        Asset(
            name="resnet101",
            description="torchvision ResNet-101 ImageNet weights, about 171 MiB (deeplabv2 init)",
            filename="resnet101-63fe2227.pth",
            urls=("https://download.pytorch.org/models/resnet101-63fe2227.pth",),
            checksum=Checksum("sha256", "63fe2227"),
            location="weights",
        ),
    )
}


def resolve_assets(names: list[str]) -> list[Asset]:
    """The catalogue entries for ``names`` (``all`` means every one), in the order given."""
    if "all" in names:
        return list(ASSETS.values())
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        known = ", ".join([*ASSETS, "all"])
        raise PipsegError(f"unknown asset {', '.join(unknown)}; known: {known}")
    return [ASSETS[n] for n in dict.fromkeys(names)]
