"""Weights files: round trip, and refusal of tampered, truncated or foreign files."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from igc_kernels.models import build_model
from igc_kernels.sr import weights as W


def small(arch="igc_vdsr_s2"):
    torch.manual_seed(0)
    return build_model(arch, backend="reference", channels=24, depth=6, primary_groups=6)


def test_round_trip(tmp_path):
    m = small()
    path = tmp_path / "m.safetensors"
    W.save_weights(m, path, {"arch": "igc_vdsr_s2", "scales": [2, 3, 4], "training_data": "T91", "steps": 7,
                              "psnr": {"Set5": {"2": 35.1}}})
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temp file left behind
    m2, meta = W.load_weights(path, backend="reference")  # same backend as m: bit-identical output
    assert meta["arch"] == "igc_vdsr_s2" and meta["scales"] == [2, 3, 4] and meta["steps"] == 7
    assert meta["model"] == {"channels": 24, "depth": 6, "primary_groups": 6}
    assert meta["psnr"] == {"Set5": {"2": 35.1}}
    assert not m2.training
    x = torch.rand(1, 1, 17, 19)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m.eval()(x), rtol=0, atol=0)
    # A plain VDSR (no IGC layers) too.
    v = small("vdsr")
    W.save_weights(v, tmp_path / "v.safetensors", {"arch": "vdsr"})
    v2, _ = W.load_weights(tmp_path / "v.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(v.state_dict().values(), v2.state_dict().values()))


def test_save_rejects_bad_metadata(tmp_path):
    with pytest.raises(ValueError, match="'arch' in"):
        W.save_weights(small(), tmp_path / "m.safetensors", {"arch": "resnet"})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        W.save_weights(small(), tmp_path / "m.safetensors", {"arch": "igc_vdsr_s2", "psnr": float("nan")})


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata=None if meta is None else {W.META_KEY: json.dumps(meta)})


def _good(tmp_path):
    m = small()
    meta = {"arch": "igc_vdsr_s2", "model": W.model_config(m)}
    return {k: v.clone().contiguous() for k, v in m.state_dict().items()}, meta


@pytest.mark.parametrize("case, match", [
    ("shape", "has shape"),
    ("missing", "missing"),
    ("extra", "unexpected"),
    ("dtype", "dtype I32"),
    ("nan", "NaN or inf"),
    ("arch", "'arch' must be one of"),
    ("model", "'model' must map"),
    ("scales", "'scales' must be a list"),
    ("no_meta", "no 'igc_kernels' metadata"),
    ("bad_json", "not valid JSON"),
])
def test_tampered_files_are_refused(tmp_path, case, match):
    tensors, meta = _good(tmp_path)
    key = next(iter(tensors))
    path = tmp_path / "t.safetensors"
    if case == "shape":
        tensors[key] = torch.randn(tensors[key].numel() + 1)
    elif case == "missing":
        del tensors[key]
    elif case == "extra":
        tensors["body.99.weight"] = torch.randn(3)
    elif case == "dtype":
        tensors[key] = tensors[key].to(torch.int32)
    elif case == "nan":
        tensors[key][..., 0] = float("nan")
    elif case == "arch":
        meta["arch"] = "srgan"
    elif case == "model":
        meta["model"] = {"channels": "96"}
    elif case == "scales":
        meta["scales"] = "2,3"
    if case == "no_meta":
        _write(path, tensors, None)
    elif case == "bad_json":
        save_file(tensors, str(path), metadata={W.META_KEY: "{arch: vdsr"})
    else:
        _write(path, tensors, meta)
    with pytest.raises(W.WeightsError, match=match):
        W.load_weights(path)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    m = small()
    path = tmp_path / "m.safetensors"
    W.save_weights(m, path, {"arch": "igc_vdsr_s2"})
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(W.WeightsError, match="truncated"):
        W.load_weights(cut)
    cut.write_bytes(data[:50])
    with pytest.raises(W.WeightsError, match="header length"):
        W.load_weights(cut)
    cut.write_bytes(data[:5])
    with pytest.raises(W.WeightsError, match="not a safetensors file"):
        W.load_weights(cut)
    pickle_file = tmp_path / "model.pt"
    torch.save(m.state_dict(), pickle_file)  # a pickle: must be refused, never unpickled
    with pytest.raises(W.WeightsError):
        W.load_weights(pickle_file)
    with pytest.raises(FileNotFoundError, match="not found"):
        W.load_weights(tmp_path / "nope.safetensors")


def test_missing_shipped_weights_message(monkeypatch, tmp_path):
    monkeypatch.setattr(W, "SHIPPED_DIR", str(tmp_path))
    with pytest.raises(W.ShippedWeightsMissing, match="pass --weights FILE.safetensors"):
        W.load_shipped("igc_vdsr_s1_x234")
    W.save_weights(small(), tmp_path / "mine.safetensors", {"arch": "igc_vdsr_s2"})
    assert W.list_shipped() == ["mine"]
    model, meta = W.load_shipped("mine")
    assert meta["arch"] == "igc_vdsr_s2"
