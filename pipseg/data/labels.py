"""Label maps: class indices ``[H, W]`` uint8 with 255 = ignore, stored as palette PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipseg.errors import PipsegError
from pipseg.io import atomic_write

IGNORE_INDEX = 255


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: ``[256, 3]`` uint8, index 255 is (224, 224, 192)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


VOC_PALETTE: np.ndarray = voc_palette()


def colour_to_index(rgb: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Map an RGB label image through the VOC colour map; unknown colours are an error."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pal = VOC_PALETTE.astype(np.int32)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup = {int(code): idx for idx, code in enumerate(pal_codes)}  # first index wins (0 = black)
    uniq, inverse = np.unique(codes, return_inverse=True)
    mapped = np.empty(len(uniq), dtype=np.uint8)
    for i, code in enumerate(uniq.tolist()):
        if code not in lookup:
            colour = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
            raise PipsegError(
                f"{path}: RGB label colour {colour} is not in the VOC colour map; "
                "save labels as palette or single-channel PNGs of class indices"
            )
        mapped[i] = lookup[code]
    return mapped[inverse.reshape(codes.shape)]


def read_label(path: str | Path) -> np.ndarray:
    """Read a label PNG as class indices ``[H, W]`` uint8.

    Palette and single-channel PNGs hold indices directly; an RGB(A) label is converted through
    the VOC colour map.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "L"):
                return np.array(img, dtype=np.uint8)
            if img.mode in ("RGB", "RGBA"):
                return colour_to_index(np.asarray(img.convert("RGB")), path)
            if img.mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.asarray(img)
                if arr.max() > 255:
                    raise PipsegError(f"{path}: label values above 255 cannot be class ids")
                return arr.astype(np.uint8)
            raise PipsegError(f"{path}: unsupported label image mode {img.mode}")
    except FileNotFoundError:
        raise PipsegError(f"{path}: label map not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise PipsegError(f"{path}: not a readable label PNG ({e})") from None


def label_to_image(label: np.ndarray) -> Image.Image:
    """A palette PIL image of a class-index map (VOC colours)."""
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="P")
    img.putpalette(VOC_PALETTE.reshape(-1).tolist())
    return img


def write_label(path: str | Path, label: np.ndarray) -> Path:
    """Write a class-index map as a VOC palette PNG, atomically."""
    img = label_to_image(label)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def colorize(label: np.ndarray) -> np.ndarray:
    """RGB ``[H, W, 3]`` uint8 rendering of a class-index map."""
    return VOC_PALETTE[label]
