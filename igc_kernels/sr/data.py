"""SR training and evaluation data: Y images, bicubic round trips, and augmented patches.

The network input is the bicubic round trip ``imresize(imresize(HR_y, 1/s), s)`` of the
modcropped HR Y channel (MATLAB-compatible bicubic, in float, DESIGN.md section 5); the target is
the HR Y itself. Both in [0, 1].

``PatchDataset`` precomputes, once per image and scale, the HR Y and its round trip and keeps them
in memory, so a patch costs one slice and one flip/rotation.

What an "epoch" is: one pass over the fixed grid of patch positions (stride ``stride``,
default ``patch_size``: the paper's non-overlapping 36x36 patches) of every image at every scale;
``len(dataset)`` is that number of patches, and one epoch is ``ceil(len(dataset) / batch_size)``
iterations. Each position is visited once per epoch; the flip/rotation is drawn afresh per epoch
(call ``set_epoch``). For T91 + BSD200 at x2/x3/x4 with 36x36 patches and stride 36 that is
73,092 patches, i.e. 4,569 iterations of batch 16 per epoch (T91 alone: 10,692 patches).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .color import rgb_to_y
from .image_io import ImageReadError, list_images, read_image
from .imresize import imresize


def y_from_image(pixels: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Y on the 0..255 scale from (H, W) gray or (H, W, 3) RGB pixels on 0..255.

    Gray is returned as is (scored on its raw values, not converted as if it were RGB). 8-bit RGB
    gives MATLAB's rounded Y; 16-bit sources keep their extra precision (float Y, not rounded).
    """
    if pixels.ndim == 2:
        return pixels.astype(np.float64)
    if bit_depth == 8:
        return rgb_to_y(pixels)
    return 16.0 + (pixels / 255.0) @ np.array([65.481, 128.553, 24.966])


def load_y(path: str | os.PathLike) -> np.ndarray:
    """The Y channel of an image file, float64 (H, W) on the 0..255 scale (alpha ignored).

    Raises ``ImageReadError`` naming the file if it cannot be read.
    """
    img = read_image(path)
    return y_from_image(img.pixels, img.bit_depth)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so that H and W are multiples of ``scale`` (MATLAB modcrop)."""
    check_scale(scale)
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    return int(scale)


def bicubic_pair(y255: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR, input), both float64 in [0, 1] of one shape: HR = modcrop(Y) / 255,
    input = imresize(imresize(HR, 1/s), s) (float, no rounding)."""
    scale = check_scale(scale)
    hr = modcrop(y255, scale) / 255.0
    if min(hr.shape) < scale:
        raise ValueError(f"image of shape {y255.shape} is smaller than the scale {scale}")
    lr = imresize(hr, 1.0 / scale)
    return hr, imresize(lr, scale)


def dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0..7) of the 8 flips/90-degree rotations of the last two dims."""
    if k & 4:
        t = t.flip(-1)
    return torch.rot90(t, k & 3, dims=(-2, -1))


def load_folder_y(
    folders: Sequence[str | os.PathLike] | str | os.PathLike, on_error: str = "skip"
) -> tuple[list[str], list[np.ndarray], list[str]]:
    """(paths, Y images, unreadable-file messages) for every image file in the folders."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    paths, ys, bad = [], [], []
    for folder in folders:
        for p in list_images(folder):
            try:
                ys.append(load_y(p))
                paths.append(p)
            except ImageReadError as e:
                if on_error == "raise":
                    raise
                bad.append(str(e))
    return paths, ys, bad


@dataclass
class _Entry:
    image: int  # index into the HR list
    scale: int
    bicubic: torch.Tensor  # (H, W) round trip of the modcropped HR, cache dtype


class PatchDataset(Dataset):
    """Augmented (input_y, target_y) patches, float32 tensors (1, P, P) in [0, 1].

    Args:
        folders: one folder or a list of folders of images (any mode, see ``image_io``).
        scales: the scales mixed in one dataset (VDSR's multi-scale training: (2, 3, 4));
            a single int or a 1-tuple for single-scale.
        patch_size: P (the paper: 36).
        augment: random flip + 90-degree rotation per patch (8 variants).
        seed: seeds the augmentation; the draw for item i in epoch e is a function of
            (seed, e, i) only, so it does not depend on worker count or order.
        stride: grid step between patch corners (default patch_size: non-overlapping).
        on_error: 'skip' (default; unreadable files are listed in ``skipped`` and warned about
            once, by name) or 'raise'.
        cache_dtype: dtype of the in-memory cache (float32; float16 halves it for DIV2K-size
            sets at ~0.04 grey levels of rounding).

    See the module docstring for what one epoch is.
    """

    def __init__(
        self,
        folders,
        scales: Iterable[int] | int = (2, 3, 4),
        patch_size: int = 36,
        augment: bool = True,
        seed: int = 0,
        *,
        stride: int | None = None,
        on_error: str = "skip",
        cache_dtype: torch.dtype = torch.float32,
        progress: bool = False,
    ) -> None:
        scales = (scales,) if isinstance(scales, int) else tuple(scales)
        if not scales:
            raise ValueError("scales must name at least one scale")
        self.scales = tuple(check_scale(s) for s in scales)
        for name, v in (("patch_size", patch_size), ("stride", stride if stride is not None else 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.patch_size = patch_size
        self.stride = patch_size if stride is None else stride
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.paths, ys, self.skipped = load_folder_y(folders, on_error)
        if self.skipped:
            warnings.warn(f"PatchDataset skipped {len(self.skipped)} unreadable file(s): " + "; ".join(self.skipped),
                          stacklevel=2)
        if not ys:
            raise ValueError(f"no readable images in {folders!r}")
        self.hr = [torch.from_numpy(y / 255.0).to(cache_dtype) for y in ys]
        self.entries: list[_Entry] = []
        corners: list[np.ndarray] = []  # per entry: (n, 2) top-left corners
        jobs = [(i, s) for i in range(len(ys)) for s in self.scales]
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, desc="bicubic round trips", unit="img")
        p, st = self.patch_size, self.stride
        for i, s in jobs:
            h, w = ys[i].shape[0] - ys[i].shape[0] % s, ys[i].shape[1] - ys[i].shape[1] % s
            if h < p or w < p:
                continue  # too small for one patch at this scale
            _, bic = bicubic_pair(ys[i], s)
            self.entries.append(_Entry(i, s, torch.from_numpy(bic).to(cache_dtype)))
            ty, tx = np.meshgrid(np.arange(0, h - p + 1, st), np.arange(0, w - p + 1, st), indexing="ij")
            corners.append(np.stack([ty.ravel(), tx.ravel()], axis=1))
        if not self.entries:
            raise ValueError(f"no image in {folders!r} is at least {p}x{p} after modcrop")
        counts = np.array([len(c) for c in corners])
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._corners = np.concatenate(corners).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh augmentations for this epoch (call before each epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        e = self.entries[int(np.searchsorted(self._offsets, index, side="right") - 1)]
        y, x = self._corners[index]
        p = self.patch_size
        inp = e.bicubic[y : y + p, x : x + p]
        tgt = self.hr[e.image][y : y + p, x : x + p]
        if self.augment:
            k = int(np.random.default_rng((self.seed, self.epoch, index)).integers(8))
            inp, tgt = dihedral(inp, k), dihedral(tgt, k)
        return (inp.to(torch.float32).unsqueeze(0).contiguous(), tgt.to(torch.float32).unsqueeze(0).contiguous())

    def describe(self) -> str:
        """One line: images, scales, patches (= one epoch), skipped files."""
        return (f"{len(self.paths)} images x scales {self.scales} -> {len(self)} patches of "
                f"{self.patch_size}x{self.patch_size} per epoch (stride {self.stride}); "
                f"{len(self.skipped)} unreadable file(s) skipped")


DATA_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
BENCHMARKS = ("Set5", "Set14")


def benchmark_folder(name: str, subdir: str = "HR") -> str:
    """Path of a benchmark set shipped in the package, e.g. ``benchmark_folder("Set5")``
    (HR images) or ``benchmark_folder("Set5", "LR_bicubic/X2")``. See data/PROVENANCE.md."""
    if name not in BENCHMARKS:
        raise ValueError(f"name must be one of {BENCHMARKS}, got {name!r}")
    path = os.path.join(DATA_ROOT, name, subdir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{subdir!r} of {name} is not shipped (looked in {path})")
    return path
