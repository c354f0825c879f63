"""Data-parallel training: two gloo processes on the CPU equal one process with twice the batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import make_images

from igc_kernels.sr.checkpoint import load_checkpoint
from igc_kernels.sr.sampling import StepBatchSampler
from igc_kernels.sr.train import CHECKPOINT_NAME, TrainConfig, train


def tiny_config(root, out: str, batch: int) -> TrainConfig:
    return TrainConfig(
        out_dir=str(root / out), channels=8, depth=4, primary_groups=2, patch_size=12, batch_size=batch,
        train_folders=[str(root / "train")], val_folder=str(root / "val"), iters=6, epoch_iters=3,
        log_every=1, threads=1, progress=False, seed=5,
    )


def _worker(rank: int, world: int, port: int, root, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    train(tiny_config(root, out, batch=2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sampler_ranks_partition_the_single_process_batch():
    n, b = 37, 4
    single = StepBatchSampler(n, 2 * b, seed=9, start_step=0, total_steps=30)
    ranks = [StepBatchSampler(n, b, seed=9, start_step=0, total_steps=30, rank=r, world_size=2) for r in (0, 1)]
    for step in range(30):
        assert ranks[0].indices(step) + ranks[1].indices(step) == single.indices(step)
    # Every sample once per pass over the data.
    stream = [i for step in range(30) for i in single.indices(step)]
    for p in range(len(stream) // n):
        assert sorted(i for q, i in stream if q == p) == list(range(n))
    # The position is the step: a sampler started at step 12 continues the same stream.
    late = StepBatchSampler(n, 2 * b, seed=9, start_step=12, total_steps=30)
    assert list(late) == [single.indices(s) for s in range(12, 30)]
    assert StepBatchSampler(n, b, seed=10, start_step=0, total_steps=1).indices(0) != ranks[0].indices(0)


def test_two_process_ddp_equals_single_process(tmp_path):
    make_images(tmp_path / "train", 3, seed=1)
    make_images(tmp_path / "val", 1, seed=2)
    n = torch.get_num_threads()
    try:
        train(tiny_config(tmp_path, "single", batch=4))
    finally:
        torch.set_num_threads(n)
    mp.start_processes(_worker, args=(2, free_port(), tmp_path, "ddp"), nprocs=2, join=True,
                       start_method="spawn")
    single = load_checkpoint(tmp_path / "single" / CHECKPOINT_NAME)
    ddp = load_checkpoint(tmp_path / "ddp" / CHECKPOINT_NAME)
    assert ddp["step"] == single["step"] == 6
    # Only rank 0 writes: one log, one weights file.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir())
    for k, v in single["model"].items():
        # Same samples, same mean gradient; only the order of the float additions differs.
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-4, atol=1e-5, msg=f"{k}")
    moved = sum(float((ddp["model"][k] - v).abs().max()) for k, v in single["model"].items())
    assert moved < 1e-3


@pytest.mark.parametrize("bad", [{"RANK": "3", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_bad_distributed_environment_is_a_clear_error(monkeypatch, bad):
    from igc_kernels.sr.distributed import init_distributed

    for k, v in bad.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="RANK"):
        init_distributed("cpu")
