"""The catalogue of things `pipseg download` knows, and how one of them gets into its place.

Each asset says where it comes from, how to check it and where it lands, so that `prepare` and
`train` find everything without flags: datasets under ``--dest`` (default ``~/data``) in the
layout their archives already have, weights in `pipseg.config.default_weights_dir()` under the
file names the model registry gives them (`pipseg.models.imagenet_weight_file`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pipseg.config import default_weights_dir
from pipseg.download.archive import ExtractProgress, extract_archive, is_extracted
from pipseg.download.fetch import Checksum, FetchResult, Progress, apply_mirror, fetch_first
from pipseg.errors import PipsegError
from pipseg.models import imagenet_weight_file

TORCHVISION_MODELS_URL = "https://download.pytorch.org/models/"
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
DEEPLAB_INIT_FILE = "deeplab_largeFOV.pth"  # what `model.init: deeplab-init` reads (docs/METHOD.md)
DEEPLAB_INIT_PAGE = "https://github.com/wangleihitcs/DeepLab-V1-PyTorch/blob/master/data/deeplab_largeFOV.pth"


@dataclass(frozen=True)
class Asset:
    """One downloadable (or hand-placed) thing.

    ``location`` is ``"dest"`` (under ``--dest``) or ``"weights"`` (under the weights folder).
    For an archive, ``extract_to`` is the folder it is unpacked into (relative to its location)
    and ``provides`` the folder it creates there; otherwise the file itself is the result.
    A ``manual`` asset cannot be fetched by a script (Google Drive, browser pages): its text says
    where to get it, and ``provides`` where to put it. ``in_all`` is False for optional assets
    that ``download all`` leaves out (the Segment Anything checkpoints, up to 2.6 GB each).
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
    in_all: bool = True

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


def _imagenet_weights(name: str, model: str, description: str, size: int | None = None) -> Asset:
    """torchvision's ImageNet weights of registry model ``model``, checked by the SHA-256 prefix
    that torchvision puts in the file name (``vgg16-397923af.pth``)."""
    filename = imagenet_weight_file(model)
    if filename is None:
        raise ValueError(f"model {model} has no ImageNet weights in the registry")
    prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    return Asset(
        name=name, description=description, filename=filename,
        urls=(TORCHVISION_MODELS_URL + filename,), size=size,
        checksum=Checksum("sha256", prefix), location="weights",
    )  # fmt: skip


def _sam_checkpoint(kind: str, filename: str, sha256: str, size: int) -> Asset:
    """Meta's public Segment Anything checkpoint of ``kind``, for ``prepare --pseudo sam``; the
    SHA-256 and size are those third-party downloaders publish for these files (Meta publishes
    none)."""
    return Asset(
        name=f"sam-{kind.replace('_', '-')}", filename=filename, urls=(SAM_URL + filename,),
        description=f"Segment Anything {kind} checkpoint (prepare --pseudo sam --sam-checkpoint)",
        size=size, checksum=Checksum("sha256", sha256), location="weights", in_all=False,
    )  # fmt: skip


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
        _imagenet_weights("vgg16", "vgg16_largefov", "torchvision VGG-16 ImageNet weights "
                          "(vgg16_largefov init)", size=553_433_881),
        _imagenet_weights("resnet101", "deeplabv2_resnet101", "torchvision ResNet-101 ImageNet "
                          "weights, about 171 MiB (deeplabv2 init)"),
        Asset(
            name="deeplab-init",
            description="the published run's DeepLab-LargeFOV init (model.init: deeplab-init)",
            filename=DEEPLAB_INIT_FILE,
            location="weights",
            manual=(
                f"get it from {DEEPLAB_INIT_PAGE} (the DeepLab-V1-PyTorch project; open it in a "
                "browser and download the raw file), save it as {destination}"
            ),
        ),
        _sam_checkpoint("vit_b", "sam_vit_b_01ec64.pth",
                        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
        _sam_checkpoint("vit_l", "sam_vit_l_0b3195.pth",
                        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
        _sam_checkpoint("vit_h", "sam_vit_h_4b8939.pth",
                        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
    )
}


def resolve_assets(names: list[str]) -> list[Asset]:
    """The catalogue entries for ``names`` (``all`` means every one but the optional SAM
    checkpoints), in the order given."""
    if "all" in names:
        return [a for a in ASSETS.values() if a.in_all]
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        known = ", ".join([*ASSETS, "all"])
        raise PipsegError(f"unknown asset {', '.join(unknown)}; known: {known}")
    return [ASSETS[n] for n in dict.fromkeys(names)]


def url_asset(url: str, *, checksum: Checksum | None = None, extract: bool = False) -> Asset:
    """An ad-hoc asset for ``pipseg download --url``: saved under ``--dest`` by its file name."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not urlsplit(url).scheme or not name or name in (".", ".."):
        raise PipsegError(
            f"--url {url}: expected a URL ending in a file name, e.g. https://host/file.tar"
        )
    return Asset(
        name=name,
        description=url,
        filename=name,
        urls=(url,),
        checksum=checksum,
        extract_to="." if extract else None,
    )


@dataclass(frozen=True)
class AssetResult:
    """What `download_asset` did: ``downloaded``, ``extracted`` (from a file already there),
    ``present`` (nothing to do) or ``manual`` (the user must fetch it; see ``note``)."""

    asset: Asset
    status: Literal["downloaded", "extracted", "present", "manual"]
    destination: Path
    fetch: FetchResult | None = None
    extracted: bool = False
    note: str | None = None


def _manual(asset: Asset, destination: Path) -> AssetResult:
    """A hand-placed asset: present when its file is there or its folder has files, else the
    instructions."""
    placed = destination.is_file() and destination.stat().st_size > 0
    if placed or (destination.is_dir() and any(destination.iterdir())):
        return AssetResult(asset, "present", destination)
    return AssetResult(asset, "manual", destination, note=asset.manual.format(destination=destination))


def download_asset(
    asset: Asset,
    *,
    dest: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
    extract_progress: ExtractProgress | None = None,
) -> AssetResult:
    """Fetch, verify and (for archives) extract one asset into the default layout.

    Datasets land under ``dest`` (VOC in ``VOCdevkit/VOC2012``, SBD in ``benchmark_RELEASE``);
    weights in ``weights_dir`` (default `pipseg.config.default_weights_dir()`). An archive whose
    extraction marker records the expected checksum is skipped without downloading, so the
    archive may be deleted after extraction. Manual assets are never fetched: the result carries
    the instructions.
    """
    dest = Path(dest).expanduser()
    weights_dir = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    destination = asset.destination(dest, weights_dir)
    if asset.manual is not None:
        return _manual(asset, destination)
    file = asset.file_path(dest, weights_dir)
    target = asset.base_dir(dest, weights_dir) / asset.extract_to if asset.extract_to else None
    key = str(asset.checksum) if asset.checksum else None
    if target is not None and key is not None and is_extracted(file, target, key):
        return AssetResult(asset, "present", destination)
    fetched = fetch_first(
        [apply_mirror(u, mirror) for u in asset.urls], file, checksum=asset.checksum,
        retries=retries, backoff=backoff, timeout=timeout, progress=progress,
    )  # fmt: skip
    extracted = target is not None and extract_archive(
        file, target, key=key, progress=extract_progress
    )
    status = (
        "downloaded" if fetched.status == "downloaded" else "extracted" if extracted else "present"
    )
    return AssetResult(asset, status, destination, fetch=fetched, extracted=extracted)
