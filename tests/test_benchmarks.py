"""Smoke tests of the benchmark scripts: they run and their tables are complete (no timings)."""

import importlib.util
import json
import os

import keras

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    path = os.path.join(REPO, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matcher_benchmark_quick_run_on_this_backend(tmp_path, capsys):
    benchmark = _load("matcher_benchmark")
    backend = keras.backend.backend()
    out = tmp_path / "matcher.json"
    records = benchmark.main(["--quick", "--backends", backend, "--json", str(out)])
    assert records and all("error" not in r for r in records), records
    assert json.loads(out.read_text()) == records
    for record in records:
        assert record["backend"] == backend
        assert record["exact"] is True, record
        for key in ("first_call_s", "ours_s", "scipy_s", "ratio"):
            assert record[key] > 0, (key, record)
    assert "scipy/ours" in capsys.readouterr().out


def test_igpt_generation_benchmark_quick_run_on_this_backend(tmp_path, capsys):
    benchmark = _load("igpt_generation_benchmark")
    backend = keras.backend.backend()
    out = tmp_path / "igpt.json"
    records = benchmark.main(["--quick", "--backend", backend, "--json", str(out)])
    assert [r["mode"] for r in records] == ["cached", "uncached"]
    assert json.loads(out.read_text()) == records
    for record in records:
        assert record["backend"] == backend and record["sequence_length"] == 16
        assert record["same"] is True, record
        for key in ("first_call_s", "median_s", "speedup", "pixels_per_s"):
            assert record[key] > 0, (key, record)
    assert "uncached/cached" in capsys.readouterr().out
