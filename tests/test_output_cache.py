"""The fused CPU op's cache of freed output blocks (csrc/cpu/output_cache.h).

The cache is process-wide, so each test sets its own limit and reads counters as differences.
"""

import multiprocessing
import os
import subprocess
import sys
import threading

import pytest
import torch

from igc_kernels.ops import igc_conv
from igc_kernels.runtime import output_cache_stats, set_output_cache_limit

L, M = 24, 4
C = L * M


@pytest.fixture
def cache_limit():
    """Runs a test with a 1 GiB limit and an empty cache, and puts the old limit back."""
    old = set_output_cache_limit(0)  # frees whatever earlier tests left
    set_output_cache_limit(1 << 30)
    yield
    set_output_cache_limit(old)


def weights(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(C, M, 3, 3, generator=g) * 0.2, torch.randn(C, L, 1, 1, generator=g) * 0.2,
            torch.randn(C, generator=g), torch.randn(C, generator=g))


def layer(x, backend="cpu", seed=0):
    w1, w2, b1, b2 = weights(seed)
    return igc_conv(x, w1, w2, b1, b2, groups=L, padding=1, activation="relu", backend=backend)


def test_a_freed_output_serves_the_next_one_of_its_size(cache_limit):
    x1, x2 = torch.randn(1, C, 52, 53), torch.randn(1, C, 52, 53)  # outputs of 1.01 MiB
    before = output_cache_stats()
    y = layer(x1)
    assert y.nbytes >= 1 << 20
    first = y.data_ptr()
    torch.testing.assert_close(y, layer(x1, backend="reference"), rtol=1e-4, atol=1e-4)
    del y
    held = output_cache_stats()
    assert held["cached_bytes"] >= (1 << 20)
    y2 = layer(x2)
    after = output_cache_stats()
    assert after["reused"] == before["reused"] + 1
    assert y2.data_ptr() == first
    assert after["cached_bytes"] < held["cached_bytes"]
    # The reused block holds the new result, not the old one.
    torch.testing.assert_close(y2, layer(x2, backend="reference"), rtol=1e-4, atol=1e-4)


def test_small_outputs_bypass_the_cache(cache_limit):
    before = output_cache_stats()
    y = layer(torch.randn(2, C, 8, 9))  # 55 KiB
    del y
    after = output_cache_stats()
    assert (after["reused"], after["fresh"], after["cached_bytes"]) == (
        before["reused"], before["fresh"], before["cached_bytes"])


def test_the_limit_bounds_idle_memory_and_zero_frees_it(cache_limit):
    xs = [torch.randn(1, C, 64, 64 + 8 * i) for i in range(4)]  # outputs of 1.5-2.1 MiB, all different
    ys = [layer(x) for x in xs]
    sizes = sorted(y.untyped_storage().nbytes() for y in ys)
    set_output_cache_limit(sizes[0] + sizes[1])
    del ys
    stats = output_cache_stats()
    assert 0 < stats["cached_bytes"] <= sizes[0] + sizes[1]
    assert set_output_cache_limit(0) == sizes[0] + sizes[1]
    assert output_cache_stats()["cached_bytes"] == 0
    # With caching off, outputs still work and nothing is kept.
    y = layer(xs[0])
    torch.testing.assert_close(y, layer(xs[0], backend="reference"), rtol=1e-4, atol=1e-4)
    del y
    assert output_cache_stats()["cached_bytes"] == 0


def test_outputs_are_ordinary_resizable_tensors(cache_limit):
    x = torch.randn(1, C, 50, 50).to(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(x, backend="reference"), rtol=1e-4, atol=1e-4)
    flat = y.contiguous().view(-1).clone()
    z = y.contiguous()
    z.resize_(2 * flat.numel())  # a bigger storage, from the same allocator
    torch.testing.assert_close(z[: flat.numel()], flat)
    z[flat.numel():] = 1.0
    assert z[-1].item() == 1.0


def test_the_backward_grad_x_comes_from_the_cache(cache_limit):
    x = torch.randn(4, C, 36, 36, requires_grad=True)  # the plane backward (training patches)
    w1, w2, b1, b2 = weights(1)
    grads = []
    for _ in range(2):
        x.grad = None
        igc_conv(x, w1, w2, b1, b2, groups=L, padding=1, activation="relu").square().sum().backward()
        grads.append(x.grad.clone())
    before = output_cache_stats()
    x.grad = None
    igc_conv(x, w1, w2, b1, b2, groups=L, padding=1, activation="relu").square().sum().backward()
    assert output_cache_stats()["reused"] >= before["reused"] + 2  # forward output and grad_x
    xr = x.detach().clone().requires_grad_(True)
    igc_conv(xr, w1, w2, b1, b2, groups=L, padding=1, activation="relu", backend="reference").square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], grads[1])


def test_threads_share_the_cache_safely(cache_limit):
    shapes = [(1, C, 44 + 4 * t, 52) for t in range(4)]
    inputs = [torch.randn(s) for s in shapes]
    expected = [layer(x, backend="reference") for x in inputs]
    errors = []

    def work(t):
        try:
            for _ in range(6):
                torch.testing.assert_close(layer(inputs[t]), expected[t], rtol=1e-4, atol=1e-4)
        except Exception as e:  # reported below: an assert in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors


def _child_layer(queue):
    # One thread, as DataLoader workers run: libgomp's thread pool does not survive fork() (the
    # parent's pool makes a child's parallel region hang, with or without this cache).
    torch.set_num_threads(1)
    x = torch.randn(1, C, 52, 53)
    queue.put(bool(torch.allclose(layer(x), layer(x, backend="reference"), rtol=1e-4, atol=1e-4)))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_allocates_outputs(cache_limit):
    held = layer(torch.randn(1, C, 52, 53))  # the cache is in use when the process forks
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_layer, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0
    assert queue.get(timeout=5) is True
    del held


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_set_output_cache_limit_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="nbytes must be an int >= 0"):
        set_output_cache_limit(bad)


_ENV_SCRIPT = """
import torch
from igc_kernels.ops import igc_conv
from igc_kernels.runtime import output_cache_stats
x = torch.randn(1, 96, 52, 53); w1 = torch.randn(96, 4, 3, 3); w2 = torch.randn(96, 24, 1, 1)
for _ in range(2):
    y = igc_conv(x, w1, w2, groups=24, padding=1)
    del y
print(output_cache_stats())
"""


def _run_with_env(value):
    env = dict(os.environ, IGC_KERNELS_CPU_OUTPUT_CACHE_MB=value)
    return subprocess.run([sys.executable, "-c", _ENV_SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def test_env_zero_turns_the_cache_off():
    done = _run_with_env("0")
    assert done.returncode == 0, done.stderr
    assert "'cached_bytes': 0, 'limit_bytes': 0, 'reused': 0, 'fresh': 2" in done.stdout


def test_env_sets_the_limit():
    done = _run_with_env("16")
    assert done.returncode == 0, done.stderr
    assert f"'limit_bytes': {16 << 20}, 'reused': 1, 'fresh': 1" in done.stdout


@pytest.mark.parametrize("bad", ["abc", "-5", "1.5", "12MB"])
def test_a_malformed_env_value_is_a_clear_error(bad):
    done = _run_with_env(bad)
    assert done.returncode != 0
    assert "IGC_KERNELS_CPU_OUTPUT_CACHE_MB must be a whole number of MiB >= 0" in done.stderr
    assert f"got '{bad}'" in done.stderr
