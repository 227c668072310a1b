"""Smoke test: the DSALT benchmark script runs with --quick and writes its JSON and plot."""

import importlib.util
import json
from pathlib import Path


def test_bench_dsalt_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_BENCH_DIR", str(tmp_path))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dsalt.py"
    spec = importlib.util.spec_from_file_location("bench_dsalt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--quick", "--variants", "attnlab_dsalt,sdpa_causal,flex_dsalt"])
    data = json.loads((tmp_path / "dsalt.json").read_text())
    assert data["rows"] and data["env"]["torch"]
    assert rows[0]["attnlab_dsalt_ms"] > 0 and rows[0]["flex_dsalt_ms"] > 0
