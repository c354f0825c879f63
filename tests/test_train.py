"""The training command: recipe, logging, kill -9 + resume, and configuration errors."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_ARGS, data_args, subprocess_env

from igc_kernels.cli.train import main
from igc_kernels.sr.checkpoint import load_checkpoint
from igc_kernels.sr.train import CHECKPOINT_NAME, LOG_NAME, WEIGHTS_NAME


@pytest.fixture
def threads_restored():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def read_log(run: Path) -> list[dict[str, str]]:
    with open(run / LOG_NAME, newline="") as f:
        return list(csv.DictReader(f))


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_NAME)["model"]


def test_short_run_schedule_log_and_weights(tmp_path, threads_restored):
    from igc_kernels.sr.weights import load_weights

    run = tmp_path / "run"
    rc = main(["--out-dir", str(run), *data_args(tmp_path), *TINY_ARGS,
               "--iters", "20", "--epoch-iters", "5", "--log-every", "1", "--lr-milestones", "0.5", "0.75"])
    assert rc == 0
    rows = read_log(run)
    train_rows = [r for r in rows if r["loss"]]
    val_rows = [r for r in rows if r["val_psnr_x2"]]
    # lr x0.1 after 50% and 75% of the 20 iterations (the row of step s shows the lr for step s+1).
    lrs = {int(r["step"]): float(r["lr"]) for r in train_rows}
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-4)
    assert lrs[14] == pytest.approx(1e-4) and lrs[15] == pytest.approx(1e-5)
    # Validation at step 0 and after each 5-iteration epoch, bicubic beside it, all scales.
    assert [int(r["step"]) for r in val_rows] == [0, 5, 10, 15, 20]
    for s in (2, 3, 4):
        bic = {float(r[f"bicubic_psnr_x{s}"]) for r in val_rows}
        assert len(bic) == 1 and 15 < bic.pop() < 60
    # The loss falls (the tiny net learns something) and stays finite.
    losses = [float(r["loss"]) for r in train_rows]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    model, meta = load_weights(run / WEIGHTS_NAME)
    assert meta["arch"] == "igc_vdsr_s1" and meta["steps"] == 20 and list(meta["scales"]) == [2, 3, 4]
    ref = model_state(run)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)
    # --export-only writes the same weights from the checkpoint.
    again = tmp_path / "again.safetensors"
    assert main(["--out-dir", str(run), *TINY_ARGS, "--export-only", "--weights-out", str(again)]) == 0
    model2, meta2 = load_weights(again)
    assert meta2["steps"] == 20 and meta2["psnr"] == meta["psnr"]
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref[k])


def test_identity_net_validates_at_bicubic_psnr(tmp_path):
    """The validation PSNR of a net with a zero residual equals the bicubic PSNR (the collapse signal)."""
    from igc_kernels.sr.validation import load_val_pairs, validate

    data_args(tmp_path)
    pairs = load_val_pairs(tmp_path / "val", (2, 3, 4))
    res = validate(torch.nn.Identity(), pairs, torch.device("cpu"))
    for s in (2, 3, 4):
        assert res[f"psnr_x{s}"] == pytest.approx(res[f"bicubic_x{s}"], abs=1e-12)


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, timeout: float = 300.0) -> None:
    # Generous: a fresh interpreter importing torch on a loaded 2-core machine can take a minute.
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before its first checkpoint: "
                                 f"{proc.stderr.read().decode()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within the timeout")
        time.sleep(0.005)


def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path, threads_restored):
    args = [*data_args(tmp_path), *TINY_ARGS, "--iters", "300", "--epoch-iters", "100",
            "--ckpt-every", "10", "--log-every", "10"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["--out-dir", str(ref), *args]) == 0

    cmd = [sys.executable, "-m", "igc_kernels.cli.train", "--out-dir", str(run), *args]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_checkpoint(proc, run / CHECKPOINT_NAME)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(run / CHECKPOINT_NAME)["step"]
    assert 10 <= killed_at < 300 and killed_at % 10 == 0

    assert main(["--out-dir", str(run), "--resume", *args]) == 0
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["step"] == 300
    expected = model_state(ref)
    for k, v in state["model"].items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    # The CSV has each step once: rows the killed run wrote after its last checkpoint were dropped.
    steps = [(int(r["step"]), bool(r["loss"])) for r in read_log(run)]
    assert len(steps) == len(set(steps))
    assert steps == [(int(r["step"]), bool(r["loss"])) for r in read_log(ref)]


def test_resume_of_finished_run_is_a_no_op(tmp_path, threads_restored):
    args = ["--out-dir", str(tmp_path / "r"), *data_args(tmp_path), *TINY_ARGS, "--iters", "4", "--epoch-iters", "2"]
    assert main(args) == 0
    before = model_state(tmp_path / "r")
    assert main([*args, "--resume"]) == 0
    after = load_checkpoint(tmp_path / "r" / CHECKPOINT_NAME)
    assert after["step"] == 4
    for k, v in after["model"].items():
        assert torch.equal(v, before[k])


def test_budget_may_change_on_resume_only_before_the_first_lr_step(tmp_path, threads_restored, capsys):
    base = ["--out-dir", str(tmp_path / "r"), *data_args(tmp_path), *TINY_ARGS, "--epoch-iters", "2",
            "--log-every", "1", "--lr-milestones", "0.5"]
    # A 4-iteration run steps the lr at iteration 2; resumed with a budget of 8 it is a run whose
    # lr steps at 4, since the first 4 iterations had lr 1e-3 under both schedules.
    assert main([*base, "--iters", "4", "--lr-milestones", "0.99"]) == 0  # lr step at 4: none used it
    assert main([*base, "--iters", "8", "--resume"]) == 0
    lrs = {int(r["step"]): float(r["lr"]) for r in read_log(tmp_path / "r") if r["loss"]}
    assert [lrs[s] for s in (1, 2, 3, 4, 5, 8)] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4])
    assert load_checkpoint(tmp_path / "r" / CHECKPOINT_NAME)["step"] == 8
    # At step 8, past the lr step at 4: a budget of 20 (step at 10) would rewrite history.
    assert main([*base, "--iters", "20", "--resume"]) == 2
    assert "the budget can change on resume only while the learning-rate steps" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["--out-dir", str(tmp_path / "r"), "--train-folders", str(missing), *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert "training data folder(s) not found" in err and str(missing) in err
    assert main(["--out-dir", str(tmp_path / "r"), *data_args(tmp_path), *TINY_ARGS, "--batch-size", "0"]) == 2
    assert "batch_size must be a positive integer, got 0" in capsys.readouterr().err


def test_existing_checkpoint_needs_resume(tmp_path, threads_restored, capsys):
    args = ["--out-dir", str(tmp_path / "r"), *data_args(tmp_path), *TINY_ARGS, "--iters", "2", "--epoch-iters", "2"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "exists: pass --resume" in capsys.readouterr().err


def test_init_weights_starts_where_the_previous_run_ended(tmp_path, threads_restored, capsys):
    args = [*data_args(tmp_path), *TINY_ARGS, "--iters", "6", "--epoch-iters", "3"]
    assert main(["--out-dir", str(tmp_path / "a"), *args]) == 0
    first = read_log(tmp_path / "a")
    weights = tmp_path / "a" / WEIGHTS_NAME
    assert main(["--out-dir", str(tmp_path / "b"), *args, "--init-weights", str(weights)]) == 0
    second = read_log(tmp_path / "b")
    # The new run's step-0 validation is the old run's last one: the same network.
    assert second[0]["step"] == "0" and second[0]["val_psnr_x2"] == first[-1]["val_psnr_x2"]
    from igc_kernels.sr.weights import load_weights

    _, meta = load_weights(tmp_path / "b" / WEIGHTS_NAME)
    assert meta["steps"] == 6 and meta["total_steps"] == 12 and meta["init_weights"]["steps"] == 6
    capsys.readouterr()
    assert main(["--out-dir", str(tmp_path / "c"), *args, "--init-weights", str(tmp_path / "nope.safetensors")]) == 2
    assert "--init-weights: weights file not found" in capsys.readouterr().err
