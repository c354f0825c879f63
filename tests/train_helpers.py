"""Shared pieces of the training tests: synthetic image folders and a tiny model configuration."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# A 4-layer, 8-channel IGC-VDSR (L = 2): the same code path as the shipped model, ~2k weights.
TINY_ARGS = ["--channels", "8", "--depth", "4", "--primary-groups", "2", "--patch-size", "12",
             "--batch-size", "4", "--threads", "1", "--no-progress"]


def make_images(folder: Path, count: int, seed: int) -> Path:
    """``count`` smooth random RGB images (bicubic-enlarged noise, so SR has something to learn)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(36, 60, 2))
        base = (rng.random((h // 4 + 2, w // 4 + 2, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        img.save(folder / f"img{i}.png")
    return folder


def data_args(root: Path) -> list[str]:
    train = make_images(root / "train", 3, seed=1)
    val = make_images(root / "val", 2, seed=2)
    return ["--train-folders", str(train), "--val-folder", str(val)]


def subprocess_env() -> dict[str, str]:
    """The environment for a training subprocess: this checkout first on the path, one thread."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env
