"""Image loading (every mode), Y conversion, modcrop, and PatchDataset."""

import numpy as np
import pytest
import torch
from PIL import Image

from igc_kernels.sr.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from igc_kernels.sr.data import PatchDataset, bicubic_pair, dihedral, load_y, modcrop
from igc_kernels.sr.image_io import ImageReadError, read_image
from igc_kernels.sr.imresize import imresize


@pytest.fixture
def rng():
    return np.random.default_rng()


def smooth_rgb(rng, h, w):
    """Random but image-like (low-pass) uint8 RGB."""
    small = rng.integers(0, 256, size=(h // 4 + 2, w // 4 + 2, 3)).astype(np.float64)
    return np.clip(imresize(small, size=(h, w)), 0, 255).round().astype(np.uint8)


def test_rgb_to_y_matches_matlab_formula(rng):
    rgb = rng.integers(0, 256, size=(5, 7, 3))
    r, g, b = (rgb[..., i] / 255.0 for i in range(3))
    expected = np.floor(16 + 65.481 * r + 128.553 * g + 24.966 * b + 0.5)
    np.testing.assert_array_equal(rgb_to_y(rgb), expected)
    assert rgb_to_y(np.array([0, 0, 0])) == 16 and rgb_to_y(np.array([255, 255, 255])) == 235
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-9)


def test_load_modes(tmp_path, rng):
    rgb = smooth_rgb(rng, 30, 40)
    y_expected = rgb_to_y(rgb)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_y(tmp_path / "rgb.png"), y_expected)

    gray = rgb[..., 1]
    Image.fromarray(gray).save(tmp_path / "gray.png")  # raw gray values, not treated as RGB
    np.testing.assert_array_equal(load_y(tmp_path / "gray.png"), gray.astype(np.float64))

    alpha = rng.integers(0, 256, size=(30, 40)).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(img.alpha, alpha)
    np.testing.assert_array_equal(load_y(tmp_path / "rgba.png"), y_expected)  # alpha ignored

    pal = Image.fromarray(rgb).quantize(64)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(load_y(tmp_path / "pal.png"), rgb_to_y(np.asarray(pal.convert("RGB"))))

    g16 = rng.integers(0, 65536, size=(30, 40)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png").bit_depth == 16
    np.testing.assert_allclose(load_y(tmp_path / "g16.png"), g16 / 257.0)


def test_unreadable_files_are_named(tmp_path, rng):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_y(tmp_path / "broken.png")
    rgb = smooth_rgb(rng, 64, 64)
    Image.fromarray(rgb).save(tmp_path / "good.png")
    full = tmp_path / "trunc.png"
    Image.fromarray(smooth_rgb(rng, 64, 64)).save(full)
    full.write_bytes(full.read_bytes()[:200])  # truncated mid-stream
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable.*broken\.png.*trunc\.png"):
        ds = PatchDataset(tmp_path, scales=2, patch_size=16)
    assert len(ds.paths) == 1 and len(ds.skipped) == 2
    with pytest.raises(ImageReadError, match="broken.png"):
        PatchDataset(tmp_path, scales=2, patch_size=16, on_error="raise")


def test_modcrop_and_pair(rng):
    y = rng.uniform(0, 255, size=(37, 29))
    assert modcrop(y, 4).shape == (36, 28)
    hr, bic = bicubic_pair(y, 3)
    assert hr.shape == bic.shape == (36, 27)
    np.testing.assert_allclose(bic, imresize(imresize(modcrop(y, 3) / 255, 1 / 3), 3))
    with pytest.raises(ValueError, match="scale must be a positive int"):
        modcrop(y, 0)


def test_dihedral_gives_eight_distinct_variants():
    t = torch.arange(9.0).reshape(3, 3)
    variants = {tuple(dihedral(t, k).flatten().tolist()) for k in range(8)}
    assert len(variants) == 8


def test_patch_dataset(tmp_path, rng):
    for i, (h, w) in enumerate([(50, 61), (40, 40), (20, 20)]):
        Image.fromarray(smooth_rgb(rng, h, w)).save(tmp_path / f"im{i}.png")
    Image.fromarray(smooth_rgb(rng, 48, 48)[..., 0]).save(tmp_path / "gray.png")
    p = 16
    ds = PatchDataset([tmp_path], scales=(2, 3), patch_size=p, augment=False)
    # Non-overlapping grid per image and scale over the modcropped size.
    expected = 0
    for h, w in [(50, 61), (40, 40), (20, 20), (48, 48)]:
        for s in (2, 3):
            hh, ww = h - h % s, w - w % s
            expected += (hh // p) * (ww // p) if hh >= p and ww >= p else 0
    assert len(ds) == expected
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == y.shape == (1, p, p) and x.dtype == y.dtype == torch.float32
        assert 0 <= y.min() and y.max() <= 1
    # The first patch equals the corner of the round trip of the first image, scale 2.
    hr, bic = bicubic_pair(load_y(ds.paths[0]), 2)
    x, y = ds[0]
    np.testing.assert_allclose(x[0].numpy(), bic[:p, :p], atol=1e-6)
    np.testing.assert_allclose(y[0].numpy(), hr[:p, :p], atol=1e-6)

    aug = PatchDataset([tmp_path], scales=(2, 3), patch_size=p, augment=True, seed=3)
    xa, ya = aug[0]
    k = [k for k in range(8) if torch.equal(dihedral(x, k), xa)]
    assert k and torch.equal(dihedral(y, k[0]), ya)  # one transform for input and target
    assert torch.equal(aug[5][0], aug[5][0])  # deterministic per (seed, epoch, index)
    draws = []
    for epoch in range(6):
        aug.set_epoch(epoch)
        draws.append(aug[0][0])
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_patch_dataset_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        PatchDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no readable images"):
        PatchDataset(tmp_path)
    Image.fromarray(smooth_rgb(rng, 20, 20)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="at least 36x36"):
        PatchDataset(tmp_path)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        PatchDataset(tmp_path, patch_size=0)


def test_patch_dataset_on_mixed_modes(tmp_path, rng):
    rgb = smooth_rgb(rng, 40, 40)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "a_gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., 1]]), "RGBA").save(tmp_path / "b_rgba.png")
    Image.fromarray(rgb).quantize(32).save(tmp_path / "c_pal.png")
    g16 = (smooth_rgb(rng, 40, 40)[..., 2].astype(np.uint16) * 257 + rng.integers(0, 257, size=(40, 40))).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "d_16bit.png")
    (tmp_path / "e_corrupt.png").write_bytes(b"GIF89a")
    with pytest.warns(UserWarning, match="e_corrupt.png"):
        ds = PatchDataset(tmp_path, scales=2, patch_size=20, augment=False)
    assert [p.split("/")[-1] for p in ds.paths] == ["a_gray.png", "b_rgba.png", "c_pal.png", "d_16bit.png"]
    assert len(ds) == 4 * 4
    np.testing.assert_allclose(ds[12][1][0].numpy(), g16[:20, :20] / 257.0 / 255.0, atol=1e-6)  # 16-bit kept
    np.testing.assert_allclose(ds[0][1][0].numpy(), rgb[:20, :20, 0] / 255.0, atol=1e-6)  # gray raw
