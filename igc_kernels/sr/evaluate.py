"""PSNR/SSIM evaluation of a model (or bicubic) on folders of HR images, as the paper's Table 2.

Protocol (DESIGN.md section 5, ``metrics.PROTOCOL``): HR Y (rounded BT.601, gray files raw),
modcropped to the scale; LR = float MATLAB-bicubic downscale; the network input is its float
bicubic upscale; the output is clamped, rounded to 8 bits and scored with ``scale`` pixels
shaved, PSNR and Wang's SSIM.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from .data import bicubic_pair, check_scale, load_y
from .image_io import ImageReadError, list_images
from .metrics import PROTOCOL, psnr, ssim, to_uint8_scale
from .upscale import sr_from_bicubic

# The paper's Table 2 (PSNR, SSIM): Bicubic and the paper's own model ("OURS").
PAPER_TABLE2 = {
    "Bicubic": {
        ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
        ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
        ("B100", 2): (29.56, 0.8431), ("B100", 3): (27.21, 0.7385), ("B100", 4): (25.96, 0.6675),
        ("Urban100", 2): (26.88, 0.8403), ("Urban100", 3): (24.26, 0.7349), ("Urban100", 4): (23.14, 0.6577),
    },
    "IGC-VDSR": {
        ("Set5", 2): (37.73, 0.9596), ("Set5", 3): (33.78, 0.9233), ("Set5", 4): (31.36, 0.8839),
        ("Set14", 2): (33.11, 0.9137), ("Set14", 3): (29.80, 0.8320), ("Set14", 4): (28.08, 0.7767),
        ("B100", 2): (31.95, 0.8970), ("B100", 3): (28.83, 0.7991), ("B100", 4): (27.31, 0.7264),
        ("Urban100", 2): (31.07, 0.9173), ("Urban100", 3): (27.16, 0.8284), ("Urban100", 4): (25.19, 0.7527),
    },
}


@dataclass
class Score:
    dataset: str
    scale: int
    psnr: float  # mean over images, dB
    ssim: float
    images: list[tuple[str, float, float]] = field(default_factory=list)  # (name, psnr, ssim)


def dataset_name(folder: str) -> str:
    """'.../Set5/HR' -> 'Set5'; '.../Urban100' -> 'Urban100'."""
    parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
    return parts[-2] if parts[-1].upper() in ("HR", "GT", "ORIGINAL") and len(parts) > 1 else parts[-1]


def score_image(y255: np.ndarray, scale: int, model: nn.Module | None, device="cpu", tile=None, dtype=None):
    """(PSNR, SSIM) of one HR Y image (0..255) at ``scale``; model None = bicubic."""
    hr01, bic01 = bicubic_pair(y255, scale)
    out01 = bic01 if model is None else sr_from_bicubic(model, bic01, device=device, tile=tile, dtype=dtype)
    hr, sr = np.floor(hr01 * 255.0 + 0.5), to_uint8_scale(out01)
    return psnr(hr, sr, shave=scale), ssim(hr, sr, shave=scale)


def evaluate(
    model: nn.Module | None,
    folders: Sequence[str],
    scales: Sequence[int],
    device="cpu",
    tile: int | None = None,
    dtype=None,
    progress: bool = False,
) -> tuple[list[Score], list[str]]:
    """Scores per (folder, scale) and the unreadable files' messages (skipped, named)."""
    scales = [check_scale(s) for s in scales]
    jobs, errors = [], []
    for folder in folders:
        name = dataset_name(folder)
        for path in list_images(folder):
            try:
                jobs.append((name, path, load_y(path)))
            except ImageReadError as e:
                errors.append(str(e))
    per: dict[tuple[str, int], Score] = {}
    for folder in folders:
        for s in scales:
            per.setdefault((dataset_name(folder), s), Score(dataset_name(folder), s, math.nan, math.nan))
    it = [(name, path, y, s) for s in scales for (name, path, y) in jobs]
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="evaluate", unit="img")
    for name, path, y, s in it:
        p, q = score_image(y, s, model, device=device, tile=tile, dtype=dtype)
        per[(name, s)].images.append((os.path.basename(path), p, q))
    scores = list(per.values())
    for sc in scores:
        if sc.images:
            sc.psnr = float(np.mean([p for _, p, _ in sc.images]))
            sc.ssim = float(np.mean([q for _, _, q in sc.images]))
    return scores, errors


def _paper(method: str, sc: Score) -> str:
    v = PAPER_TABLE2[method].get((sc.dataset, sc.scale))
    return f"{v[0]:.2f} / {v[1]:.4f}" if v else "-"


def format_table(scores: Sequence[Score], label: str, markdown: bool = False) -> str:
    """The Table-2-style table: Dataset, Scale, this run, and the paper's Bicubic / IGC-VDSR."""
    head = ["Dataset", "Scale", "Images", f"{label} PSNR / SSIM", "paper Bicubic", "paper IGC-VDSR"]
    rows = [[sc.dataset, f"x{sc.scale}", str(len(sc.images)), f"{sc.psnr:.2f} / {sc.ssim:.4f}",
             _paper("Bicubic", sc), _paper("IGC-VDSR", sc)] for sc in scores]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return f"Protocol: {PROTOCOL}.\n\n" + "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([f"Protocol: {PROTOCOL}.", fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def format_csv(scores: Sequence[Score], label: str) -> str:
    """One row per image plus one 'mean' row per (dataset, scale)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "dataset", "scale", "image", "psnr", "ssim"])
    for sc in scores:
        for name, p, q in sc.images:
            w.writerow([label, sc.dataset, sc.scale, name, f"{p:.4f}", f"{q:.5f}"])
        w.writerow([label, sc.dataset, sc.scale, "mean", f"{sc.psnr:.4f}", f"{sc.ssim:.5f}"])
    return buf.getvalue()
