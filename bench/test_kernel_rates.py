"""bench/kernel_rates.py: the microkernel tool builds against the library's kernels and reports
every case, on every instruction set this CPU has (a few calls: a smoke test, not a timing)."""

import pytest

import kernel_rates


def test_builds_and_reports_each_kernel_per_isa():
    rates, missing = kernel_rates.measure(["avx512", "avx2", "generic"], calls=20)
    seen = {(kernel, isa) for kernel, isa, gflops in rates if gflops > 0}
    assert "generic" not in missing  # the portable kernels run everywhere
    for isa in ("avx512", "avx2", "generic"):
        if isa not in missing:
            assert {("wino", isa), ("rows", isa)} <= seen, (isa, rates)
    # The AMX probe runs beside the avx512 kernels where the CPU has AMX (the tool itself exits
    # non-zero, failing measure(), if its result is less accurate than fp32 allows).
    if "avx512" not in missing and "amxbf16x3" not in missing:
        assert ("rows", "amxbf16x3") in seen, rates
    if "avx512" in missing:
        assert ("rows", "amxbf16x3") not in seen, rates


def test_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        kernel_rates.main(["--calls", "0"])
    assert "--calls must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kernel_rates.main(["--isa", "sse9"])
