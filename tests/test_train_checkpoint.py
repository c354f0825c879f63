"""Checkpoints: atomic writes, and refusal of truncated, tampered or foreign files."""

from __future__ import annotations

import os

import pytest
import torch
from train_helpers import TINY_ARGS, data_args

from igc_kernels.cli.train import main
from igc_kernels.sr import checkpoint as ck
from igc_kernels.sr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def sample_state() -> dict:
    g = torch.Generator().manual_seed(3)
    return {"step": 7, "model": {"w": torch.randn(4, 3, generator=g)}, "names": ["a", "b"], "lr": 1e-3}


def test_round_trip(tmp_path):
    state = sample_state()
    save_checkpoint(tmp_path / "c.ckpt", state)
    back = load_checkpoint(tmp_path / "c.ckpt")
    assert back["step"] == 7 and back["names"] == ["a", "b"]
    assert torch.equal(back["model"]["w"], state["model"]["w"])


def test_truncated_file_is_refused(tmp_path):
    p = tmp_path / "c.ckpt"
    save_checkpoint(p, sample_state())
    data = p.read_bytes()
    for keep in (len(data) - 1, len(data) // 2, len(ck.MAGIC) + 10):
        p.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(p)


def test_tampered_payload_is_refused(tmp_path):
    p = tmp_path / "c.ckpt"
    save_checkpoint(p, sample_state())
    data = bytearray(p.read_bytes())
    data[-200] ^= 0x01  # one bit inside the payload
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt, truncated or was modified"):
        load_checkpoint(p)


def test_foreign_files_are_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    p = tmp_path / "pickle.ckpt"
    torch.save({"x": Boom()}, p)  # a plain torch.save file that would run code if unpickled
    with pytest.raises(CheckpointError, match="not an igc_kernels training checkpoint"):
        load_checkpoint(p)
    # A well-formed header over such a payload: the digest matches, weights_only refuses it.
    payload = p.read_bytes()
    import hashlib

    q = tmp_path / "forged.ckpt"
    q.write_bytes(ck.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_checkpoint(q)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "c.ckpt"
    save_checkpoint(p, sample_state())
    before = p.read_bytes()

    def crash(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(p, {"step": 8})
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt"]  # no temp file left behind


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    n = torch.get_num_threads()
    try:
        args = ["--out-dir", str(tmp_path / "r"), *data_args(tmp_path), *TINY_ARGS, "--iters", "2",
                "--epoch-iters", "2"]
        assert main(args) == 0
        p = tmp_path / "r" / "checkpoint.ckpt"
        p.write_bytes(p.read_bytes()[:-100])
        capsys.readouterr()
        assert main([*args, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "igc-train: error:" in err and "refusing to load it" in err and "Traceback" not in err
    finally:
        torch.set_num_threads(n)
