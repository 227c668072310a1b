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


def test_bench_dsalt_quick_phases(tmp_path, monkeypatch):
    """--phases / --profile on the CPU smoke sizes."""
    monkeypatch.setenv("ATTNLAB_BENCH_DIR", str(tmp_path))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dsalt.py"
    spec = importlib.util.spec_from_file_location("bench_dsalt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--quick", "--variants", "attnlab_dsalt", "--phases", "--name", "dsalt_phases"])
    assert rows[0]["attnlab_dsalt_select_ms"] > 0 and rows[0]["attnlab_dsalt_fwd_ms"] > 0


def test_dsalt_register_report_quick():
    """The offline register report compiles the selection kernel for sm_90 (no GPU needed)."""
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "dsalt_registers.py"
    out = subprocess.run([sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True,
                         timeout=300)
    if out.returncode and ("GPUTarget" in out.stderr or "ptxas" in out.stderr):
        pytest.skip(f"triton cannot compile for sm_90 here: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "_select_kernel" in out.stdout


def test_dsalt_s6_ab_quick():
    """The session-6 device A/B script's CPU smoke run (the interpreter, both landmark paths)."""
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "device_runs" / "dsalt_s6_ab.py"
    out = subprocess.run([sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'lm_bwd': 'trans'" in out.stdout



def test_dsalt_s8_ncu_quick():
    """The session-8 Nsight Compute driver's CPU smoke run (interpreter, tiny size, the default landmark
    backward)."""
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "device_runs" / "dsalt_s8_ncu.py"
    out = subprocess.run([sys.executable, str(script), "trans", "--quick"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok trans 40")
