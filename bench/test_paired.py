"""bench/paired.py: the interleaving, the per-round ratios under drift, and the command (small shapes)."""

import pytest
from network import first_run
from paired import interleaved_times, main, paired_ratios, quartiles


class DriftingMachine:
    """A fake clock and runs: run `name` costs cost[name] x the machine's current slowness, which
    doubles after `switch` calls (a VM whose neighbour wakes up)."""

    def __init__(self, cost, switch):
        self.cost, self.switch, self.now, self.calls, self.order = cost, switch, 0.0, 0, []

    def clock(self):
        return self.now

    def run(self, name):
        def go():
            self.order.append(name)
            self.now += self.cost[name] * (2.0 if self.calls >= self.switch else 1.0)
            self.calls += 1
        return go


def test_rotation_warmup_and_counts():
    m = DriftingMachine({"a": 1.0, "b": 2.0, "c": 3.0}, switch=10**9)
    times = interleaved_times({n: m.run(n) for n in "abc"}, rounds=3, warmup=1, clock=m.clock)
    assert m.order == list("abc" "bca" "cab" "abc")  # each round starts one run later
    assert times == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [3.0] * 3}  # the warm-up round is not timed
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved_times({"a": m.run("a")}, rounds=0, warmup=0)


def test_paired_ratio_survives_drift_that_sequential_medians_do_not():
    """The true ratio is 4x. The machine halves its speed partway: rounds timed in sequence (all of
    the fused run's, then all of the peer's) would give 8x; the interleaved rounds give 4x."""
    m = DriftingMachine({"fused": 1.0, "peer": 4.0}, switch=20)
    times = interleaved_times({"fused": m.run("fused"), "peer": m.run("peer")}, rounds=20, warmup=0, clock=m.clock)
    q1, med, q3 = quartiles(paired_ratios(times, "fused")["peer"])
    assert (q1, med, q3) == (4.0, 4.0, 4.0)
    sequential = {"fused": [1.0] * 20, "peer": [8.0] * 20}  # the peer's rounds all in the slow stretch
    assert quartiles(paired_ratios(sequential, "fused")["peer"])[1] == 8.0
    with pytest.raises(ValueError, match="base 'x' is not among"):
        paired_ratios(times, "x")


def test_quartiles():
    assert quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    with pytest.raises(ValueError):
        quartiles([])


def test_command_on_small_shapes(tmp_path, capsys):
    out = tmp_path / "paired.md"
    assert main(["--networks", "igc_vdsr-fused", "vdsr", "--rounds", "2", "--warmup", "0", "--size", "12x12",
                 "--out", str(out)]) == 0
    text = out.read_text()
    for mode in ("inference, 1x1x12x12", "train-step, 16x1x12x12"):
        assert mode in text
    assert text.count("| igc_vdsr-fused |") == 2 and text.count("| vdsr |") == 2
    with pytest.raises(SystemExit):
        main(["--size", "12by12"])
    assert "--size must be HxW" in capsys.readouterr().err


def test_first_run_flags_a_compiled_network_that_compiled_nothing():
    calls = []
    assert first_run("igc_vdsr-fused", lambda: calls.append(1))  # eager: nothing to compile
    assert not first_run("igc_vdsr-fused-compile", lambda: calls.append(1))  # ran, yet no graph compiled
    assert calls == [1, 1]
