"""bench/report.py on a synthetic results file: table, ratios, plot and README update."""

import json

import peak
import report


def _bench(provider, median, mode="forward", q1=None, q3=None):
    stats = {"median": median, "rounds": 10}
    if q1 is not None:
        stats.update(q1=q1, q3=q3)
    return {"name": f"test_layer_cpu_fp32[{provider}]", "params": {"provider": provider, "mode": mode},
            "stats": stats,
            "extra_info": {"device": "cpu", "dtype": "float32", "torch": "2.x", "threads": 2,
                           "shape": "1x96x256x256", "gflop": 0.755}}


def test_report_tables_plot_and_readme(tmp_path):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "Test CPU"}},
                               "datetime": "2026-03-04T23:59:00.5+00:00",
                               "benchmarks": [_bench("stock-nchw", 0.120, q1=0.100, q3=0.150),
                                              _bench("fused-cpu", 0.008, q1=0.0075, q3=0.010),
                                              _bench("dense", 0.056)]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\nrest\n")
    assert report.main([str(raw), "--out-dir", str(tmp_path / "out"), "--readme", str(readme),
                        "--peak-gflops", "230"]) == 0
    # Named for the day the benchmarks ran, not the day of the report.
    md = (tmp_path / "out" / "cpu-2026-03-04.md").read_text()
    assert "| fused-cpu | 8.00 | 7.50-10.00 | 94.4 | 41% | 1.00x | - | 10 |" in md  # 94.4 of 230 GFLOP/s
    # The range: 100 / 10 to 150 / 7.5 (the peer's quartiles over the fused path's opposite ones).
    assert "| stock-nchw | 120.00 | 100.00-150.00 | 6.3 | 3% | 15.00x | 10.00-20.00x | 10 |" in md
    # A row without quartiles (not written by pytest-benchmark) spans its median alone.
    assert "| dense | 56.00 | 56.00-56.00 | 13.5 | 6% | 7.00x | 5.60-7.47x | 10 |" in md
    assert (tmp_path / "out" / "cpu-2026-03-04.png").stat().st_size > 1000
    text = readme.read_text()
    assert "old" not in text and "| dense | 56.00 |" in text and text.startswith("intro") and text.endswith("rest\n")


def test_run_date(tmp_path):
    """The latest 'datetime' of the results files; today where none records one or it is unreadable."""
    import datetime as dt

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"datetime": "2026-01-02T10:00:00+00:00", "benchmarks": []}))
    b.write_text(json.dumps({"datetime": "2026-01-05T01:00:00Z", "benchmarks": []}))
    c.write_text(json.dumps({"datetime": "not a date", "benchmarks": []}))
    assert report.run_date([a, b]) == dt.date(2026, 1, 5)
    assert report.run_date([a, c]) == dt.date(2026, 1, 2)
    assert report.run_date([c]) == dt.date.today()


def test_report_rejects_missing_file(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope.json")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_report_peak_option(tmp_path, capsys):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"benchmarks": [_bench("fused-cpu", 0.008)]}))
    assert report.main([str(raw), "--out-dir", str(tmp_path / "out"), "--peak-gflops", "94.375"]) == 0
    assert "| fused-cpu | 8.00 | 8.00-8.00 | 94.4 | 100% | 1.00x | - | 10 |" in next((tmp_path / "out").glob("cpu-*.md")).read_text()
    assert report.main([str(raw), "--out-dir", str(tmp_path / "out"), "--peak-gflops", "0"]) == 2
    assert "--peak-gflops must be positive" in capsys.readouterr().err


def test_report_peak_measured_by_default(tmp_path, monkeypatch, capsys):
    """Without --peak-gflops the peak is measured on the benchmark's thread count; where it cannot
    be, DEFAULT_PEAK_GFLOPS is used and the report says so."""
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"benchmarks": [_bench("fused-cpu", 0.008)]}))
    asked = []
    monkeypatch.setattr(peak, "measure_peak_gflops", lambda threads: asked.append(threads) or 188.8)
    assert report.main([str(raw), "--out-dir", str(tmp_path / "a")]) == 0
    assert asked == [2]
    assert "| fused-cpu | 8.00 | 8.00-8.00 | 94.4 | 50% | 1.00x | - | 10 |" in next((tmp_path / "a").glob("cpu-*.md")).read_text()
    monkeypatch.setattr(peak, "measure_peak_gflops", lambda threads: None)
    assert report.main([str(raw), "--out-dir", str(tmp_path / "b")]) == 0
    assert "could not measure" in capsys.readouterr().out
    expected = f"{100 * 94.375 / report.DEFAULT_PEAK_GFLOPS:.0f}%"
    assert f"| fused-cpu | 8.00 | 8.00-8.00 | 94.4 | {expected} |" in next((tmp_path / "b").glob("cpu-*.md")).read_text()


def test_measure_peak_gflops():
    """The real measurement: a positive rate where a C compiler exists (CI has one), and a clear
    error for a bad thread count."""
    import shutil

    import pytest
    from peak import measure_peak_gflops

    got = measure_peak_gflops(1)
    if shutil.which("cc") or shutil.which("gcc"):
        assert got is not None and got > 1.0
    with pytest.raises(ValueError, match="threads must be a positive int"):
        measure_peak_gflops(0)
