"""Reading any image users throw at us into one form: uint8 RGB ``[H, W, 3]``.

`read_image` is the one decoder (training data, pseudo labels, predict, crf): OpenCV for JPEG
(the fast path; it honours EXIF orientation), Pillow for everything else, where transparency,
palettes and 16-bit depth need care. `index_images` finds images by id in a folder, whatever
their extension.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipseg.errors import PipsegError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
)
_JPEG = frozenset({".jpg", ".jpeg", ".jpe"})


def is_image_file(name: str | Path) -> bool:
    """Whether ``name`` has a supported image extension (any case)."""
    return os.path.splitext(str(name))[1].lower() in IMAGE_EXTENSIONS


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode (gray, RGBA, palette, 16-bit, CMYK) to a uint8 RGB array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit gray: scale by the true bit depth, not by clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        gray = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto white rather than dropping alpha onto garbage colours.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _read_with_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            # Writable and contiguous, as OpenCV gives it (GrabCut and DenseCRF write or need both).
            return np.require(to_rgb_uint8(img), requirements=["C", "W"])
    except FileNotFoundError:
        raise PipsegError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise PipsegError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]``, honouring EXIF orientation.

    JPEG goes through OpenCV (about twice as fast as Pillow); other files, and JPEGs OpenCV
    cannot read, through Pillow (alpha composited onto white, 16-bit scaled by its depth).
    Raises `PipsegError` naming the file when it is missing or not a readable image.
    """
    path = Path(path)
    if path.suffix.lower() in _JPEG:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _read_with_pillow(path)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file without decoding its pixels (EXIF-rotated)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise PipsegError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise PipsegError(f"{path}: not a readable image ({e})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def index_images(folder: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Images directly in ``folder`` by id (file name without extension), any supported extension.

    Returns ``(id -> path, problems)``; a problem names an id found with two extensions
    (``a.jpg`` and ``a.png``), which is ambiguous. A missing folder gives no images.
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    problems: list[str] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return found, problems
    for entry in entries:
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() not in IMAGE_EXTENSIONS or not entry.is_file():
            continue
        if stem in found:
            problems.append(
                f"{folder / entry.name}: a second image for '{stem}' (also {found[stem].name}); "
                "keep one"
            )
            continue
        found[stem] = folder / entry.name
    return found, problems
