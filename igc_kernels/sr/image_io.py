"""Reading and writing images for the SR tools, with every mode handled explicitly.

Pillow modes are mapped to float arrays on the 0..255 scale:
- 'L', 'P' (palette, expanded to RGB or RGBA), 'RGB', 'RGBA', 'LA', 'CMYK', 'YCbCr' (converted to RGB);
- 16-bit ('I;16*', 'I'): divided by 257 so 65535 -> 255 (values kept as floats, not truncated);
- 32-bit float ('F'): taken as 0..255 if its maximum is above 1, else as 0..1.
The result says whether the image is gray (scored on its raw values) and carries the alpha.
A file's EXIF orientation is applied when it is read (a phone photo stored sideways comes out as
it is shown), and 16-bit gray images are written back with 16 bits where the format holds them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """A file that is not a readable image; the message names the file."""


@dataclass
class LoadedImage:
    """pixels: (H, W) for gray or (H, W, 3) RGB, float64 on 0..255; alpha: (H, W) or None."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    mode: str  # the file's Pillow mode
    bit_depth: int  # 8 or 16 (32 for float files)

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2


def _sixteen_bit(img: Image.Image) -> np.ndarray:
    a = np.asarray(img).astype(np.float64)
    if a.max(initial=0) > 65535 or a.min(initial=0) < 0:
        raise ValueError(f"32-bit integer image with values outside 0..65535 ({a.min()}..{a.max()})")
    return a / 257.0


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read ``path`` into a ``LoadedImage``; raise ``ImageReadError`` naming the file if unreadable."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
            # Pixels as the file is shown: the EXIF orientation applied (and the tag dropped), so
            # the written result, which carries no EXIF, is not turned sideways.
            return _convert(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {path!r}: {e}") from e


def _convert(img: Image.Image) -> LoadedImage:
    mode = img.mode
    if mode == "P":
        # Palette images may carry transparency in the palette: expand to RGBA only then.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1",):
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "HSV", "LAB"):
        img = img.convert("RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    m = img.mode
    if m == "L":
        return LoadedImage(np.asarray(img).astype(np.float64), None, mode, 8)
    if m == "LA":
        a = np.asarray(img).astype(np.float64)
        return LoadedImage(a[..., 0], a[..., 1], mode, 8)
    if m == "RGB":
        return LoadedImage(np.asarray(img).astype(np.float64), None, mode, 8)
    if m == "RGBA":
        a = np.asarray(img).astype(np.float64)
        return LoadedImage(a[..., :3], a[..., 3], mode, 8)
    if m.startswith("I;16") or m == "I":
        return LoadedImage(_sixteen_bit(img), None, mode, 16)
    if m == "F":
        a = np.asarray(img).astype(np.float64)
        a = a if a.max(initial=0) > 1.0 else a * 255.0
        return LoadedImage(np.clip(a, 0, 255), None, mode, 32)
    raise ValueError(f"unsupported image mode {mode!r}")


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files (by extension) directly in ``folder``, sorted by name."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder!r}")
    return sorted(
        os.path.join(folder, n)
        for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
    )


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Clip to 0..255 and round half up."""
    return np.floor(np.clip(a, 0, 255) + 0.5).astype(np.uint8)


# Formats that Pillow writes 16-bit gray ('I;16') to.
SIXTEEN_BIT_EXTENSIONS = (".png", ".tif", ".tiff")


def write_image(path: str | os.PathLike, pixels: np.ndarray, alpha: np.ndarray | None = None,
                bit_depth: int = 8) -> None:
    """Write (H, W) gray or (H, W, 3) RGB on 0..255 (+ optional alpha), atomically: as 8 bits, or
    with ``bit_depth=16`` a gray image without alpha as 16 bits (0..255 -> 0..65535) where the
    format holds them (PNG, TIFF; 8 bits elsewhere)."""
    path = os.fspath(path)
    if bit_depth not in (8, 16, 32):
        raise ValueError(f"bit_depth must be 8, 16 or 32 (the read image's), got {bit_depth!r}")
    if bit_depth == 16 and pixels.ndim == 2 and alpha is None and path.lower().endswith(SIXTEEN_BIT_EXTENSIONS):
        wide = np.floor(np.clip(pixels, 0, 255) * 257.0 + 0.5).astype(np.uint16)
        img = Image.fromarray(wide)  # 2-D uint16: mode I;16
    elif alpha is not None:
        if path.lower().endswith((".jpg", ".jpeg")):
            raise ValueError(f"{path!r}: JPEG cannot store the alpha channel; write .png instead")
        px, al = to_uint8(pixels), to_uint8(alpha)
        arr = np.dstack([px, al]) if px.ndim == 2 else np.dstack([px, al[..., None]])
        img = Image.fromarray(arr, "LA" if px.ndim == 2 else "RGBA")
    else:
        img = Image.fromarray(to_uint8(pixels), "L" if pixels.ndim == 2 else "RGB")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        img.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
