"""Tiled inference, the upscale pipeline (gray, RGBA, large images) and the two commands."""

import numpy as np
import pytest
import torch
from PIL import Image

from igc_kernels.cli.evaluate import main as eval_main
from igc_kernels.cli.upscale import main as upscale_main
from igc_kernels.models import build_model
from igc_kernels.sr.imresize import imresize
from igc_kernels.sr.upscale import run_tiled, tile_spans, upscale_image
from igc_kernels.sr.weights import save_weights


def smooth(rng, h, w, c):
    small = rng.integers(0, 256, size=(h // 5 + 2, w // 5 + 2, c)).astype(np.float64)
    return np.clip(imresize(small, size=(h, w)), 0, 255).round().astype(np.uint8)


def test_tile_spans_cover_exactly():
    for length, tile, ctx in [(100, 32, 20), (64, 64, 20), (65, 64, 5), (7, 3, 0)]:
        spans = tile_spans(length, tile, ctx)
        cores = [i for _, _, a, b in spans for i in range(a, b)]
        assert cores == list(range(length))
        for a, b, ca, cb in spans:
            assert a == max(ca - ctx, 0) and b == min(cb + ctx, length)


def test_tiled_equals_untiled_full_depth():
    """20 layers: receptive field 41, so 20 px of context make tiling exact (up to float order)."""
    torch.manual_seed(0)
    m = build_model("igc_vdsr_s1").eval()
    x = torch.rand(1, 1, 90, 101)
    with torch.no_grad():
        whole = m(x)
    tiled = run_tiled(m, x, tile=40)  # 3 x 3 tiles
    torch.testing.assert_close(tiled, whole, rtol=0, atol=2e-5)
    to8 = lambda t: torch.floor(t.clamp(0, 1) * 255 + 0.5)  # noqa: E731
    assert (to8(tiled) != to8(whole)).float().mean() < 1e-3
    short = run_tiled(m, x, tile=40, context=8)  # too little context: seams
    assert (short - whole).abs().max() > 1e-3


@pytest.fixture
def weights_file(tmp_path):
    """A small trained-looking model file (6 layers) for the pipeline and command tests."""
    torch.manual_seed(1)
    m = build_model("vdsr", channels=8, depth=6)
    path = tmp_path / "w.safetensors"
    save_weights(m, path, {"arch": "vdsr", "scales": [2, 3, 4], "training_data": "none (test)", "steps": 0})
    return m.eval(), path


def test_zero_residual_model_gives_bicubic_colour(rng=np.random.default_rng()):
    m = build_model("vdsr", channels=8, depth=4).eval()
    with torch.no_grad():
        m.tail.weight.zero_()
        m.tail.bias.zero_()
    rgb = smooth(rng, 30, 26, 3)
    img = read_image_array(rgb)
    out, alpha = upscale_image(m, img, 3, tile=None)
    assert out.shape == (90, 78, 3) and alpha is None
    np.testing.assert_allclose(out, np.clip(imresize(rgb.astype(float), 3), 0, 255), atol=3e-5)  # fp32 net


def read_image_array(rgb):
    from igc_kernels.sr.image_io import LoadedImage

    return LoadedImage(rgb.astype(np.float64), None, "RGB", 8)


def test_upscale_command_gray_rgba_large(tmp_path, weights_file):
    rng = np.random.default_rng()
    model, wpath = weights_file
    src = tmp_path / "in"
    src.mkdir()
    gray = smooth(rng, 21, 17, 1)[..., 0]
    Image.fromarray(gray).save(src / "gray.png")
    rgba = smooth(rng, 19, 23, 4)
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    (src / "broken.png").write_bytes(b"junk")
    out = tmp_path / "out"
    rc = upscale_main([str(src), "-o", str(out), "--scale", "3", "--weights", str(wpath), "--no-progress"])
    assert rc == 0
    g = Image.open(out / "gray.png")
    assert g.mode == "L" and g.size == (17 * 3, 21 * 3)
    a = Image.open(out / "rgba.png")
    assert a.mode == "RGBA" and a.size == (23 * 3, 19 * 3)
    alpha_expected = np.floor(np.clip(imresize(rgba[..., 3].astype(float), 3), 0, 255) + 0.5)
    np.testing.assert_array_equal(np.asarray(a)[..., 3], alpha_expected)
    # Gray path: Y is the raw gray value through the model.
    with torch.no_grad():
        y = model(torch.from_numpy(imresize(gray / 255.0, 3)).float()[None, None])[0, 0].double().numpy()
    np.testing.assert_allclose(np.asarray(g).astype(float), np.floor(np.clip(y, 0, 1) * 255 + 0.5), atol=1)

    # A large image through the tiled path equals the untiled result to 8-bit rounding.
    big = smooth(rng, 230, 310, 3)
    Image.fromarray(big).save(tmp_path / "big.png")
    assert upscale_main([str(tmp_path / "big.png"), "-o", str(tmp_path / "t.png"), "--tile", "64",
                         "--weights", str(wpath)]) == 0
    assert upscale_main([str(tmp_path / "big.png"), "-o", str(tmp_path / "u.png"), "--tile", "0",
                         "--weights", str(wpath)]) == 0
    t = np.asarray(Image.open(tmp_path / "t.png")).astype(int)
    u = np.asarray(Image.open(tmp_path / "u.png")).astype(int)
    assert t.shape == (460, 620, 3)
    assert np.abs(t - u).max() <= 1 and (t != u).mean() < 1e-3


def test_upscale_command_exif_orientation_and_16_bit_gray(tmp_path, weights_file):
    """A JPEG whose EXIF orientation turns it sideways is upscaled as it is shown; a 16-bit gray PNG
    comes back with 16 bits (the 8-bit result's values, to 16-bit rounding), an 8-bit one with 8."""
    rng = np.random.default_rng()
    model, wpath = weights_file
    rgb = smooth(rng, 20, 32, 3)  # stored 32 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown turned 90 degrees clockwise, 20 wide and 32 high
    Image.fromarray(rgb).save(tmp_path / "side.jpg", exif=exif, quality=95)
    assert upscale_main([str(tmp_path / "side.jpg"), "-o", str(tmp_path / "side.png"), "--weights", str(wpath)]) == 0
    out = Image.open(tmp_path / "side.png")
    assert out.size == (20 * 2, 32 * 2) and not out.getexif().get(0x0112)

    gray16 = smooth(rng, 18, 22, 1)[..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, size=(18, 22)).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    assert upscale_main([str(tmp_path / "g16.png"), "-o", str(tmp_path / "g16_x2.png"), "--weights", str(wpath)]) == 0
    wide = Image.open(tmp_path / "g16_x2.png")
    assert wide.mode.startswith("I") and wide.size == (44, 36)
    with torch.no_grad():
        y = model(torch.from_numpy(imresize(gray16 / 65535.0, 2)).float()[None, None])[0, 0].double().numpy()
    got = np.asarray(wide).astype(float)
    np.testing.assert_allclose(got, np.floor(np.clip(y, 0, 1) * 65535 + 0.5), atol=2 * 257 / 255)
    assert (got % 257 != 0).any()  # not 8-bit values scaled up
    # The same image written as JPEG (8 bits only) is 8-bit.
    assert upscale_main([str(tmp_path / "g16.png"), "-o", str(tmp_path / "g16_x2.jpg"), "--weights", str(wpath)]) == 0
    assert Image.open(tmp_path / "g16_x2.jpg").mode == "L"


def test_write_image_rejects_bad_bit_depth(tmp_path):
    from igc_kernels.sr.image_io import write_image

    with pytest.raises(ValueError, match="bit_depth must be 8, 16 or 32"):
        write_image(tmp_path / "x.png", np.zeros((4, 4)), bit_depth=12)
    assert not list(tmp_path.iterdir())


def test_upscale_command_errors(tmp_path, capsys, monkeypatch):
    from igc_kernels.sr import weights as W

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(W, "SHIPPED_DIR", str(tmp_path / "none"))
    assert upscale_main([str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no shipped weights" in err and "--weights" in err
    assert upscale_main([str(tmp_path / "missing.png")]) == 2
    assert "input not found" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    assert upscale_main([str(tmp_path / "a.png"), "--weights", str(bad)]) == 2
    assert "header is not valid JSON" in capsys.readouterr().err
    assert upscale_main([str(tmp_path / "a.png"), "-o", str(tmp_path / "a.txt"), "--weights", str(bad)]) == 2
    assert "must end in one of" in capsys.readouterr().err
    assert upscale_main([str(tmp_path / "a.png"), "--dtype", "float16", "--device", "cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_eval_command(tmp_path, capsys, weights_file):
    _, wpath = weights_file
    md, csv = tmp_path / "r.md", tmp_path / "r.csv"
    from igc_kernels.sr.data import benchmark_folder

    rc = eval_main(["--model", "bicubic", "--data", benchmark_folder("Set5"), "--scales", "4",
                    "--markdown", str(md), "--csv", str(csv), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Protocol:" in out and "Set5" in out and "28.42 / 0.8104" in out
    assert "| Set5 | x4 | 5 |" in md.read_text()
    rows = csv.read_text().splitlines()
    assert rows[0] == "model,dataset,scale,image,psnr,ssim" and len(rows) == 1 + 5 + 1
    rc = eval_main(["--weights", str(wpath), "--data", benchmark_folder("Set5"), "--scales", "4", "--tile", "160",
                    "--no-progress"])
    assert rc == 0
    assert "Model: vdsr" in capsys.readouterr().out
    assert eval_main(["--model", "bicubic", "--data", str(tmp_path / "nope")]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_reduced_precision_tiles():
    """bfloat16 compute (CPU stand-in for the GPU fp16/bf16 option): close to fp32, and the
    model/compute dtype mismatch is a clear error."""
    torch.manual_seed(2)
    m = build_model("vdsr", channels=16, depth=6).eval()
    x = torch.rand(1, 1, 40, 44)
    ref = run_tiled(m, x, tile=None)
    low = run_tiled(m.to(torch.bfloat16), x, tile=24)
    assert low.dtype == torch.float32 and (low - ref).abs().max() < 0.05
    with pytest.raises(ValueError, match="differs from the model's"):
        run_tiled(m, x, dtype=torch.float16)
