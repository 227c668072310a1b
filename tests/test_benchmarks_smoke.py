"""Benchmark scripts run end to end at tiny sizes (CPU) and write their JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,args,name", [
    ("bench_train_step.py", ["--quick", "--mixers", "mha,mla"], "train_step_tiny"),
    ("bench_mla_decode.py", ["--quick"], "mla_decode"),
    ("count_train_ops.py", ["--quick", "--mixers", "mha,mla"], "train_ops_tiny"),
    ("diff_launch_overhead.py", ["--quick"], "diff_launch_overhead_quick"),
])
def test_benchmark_quick(tmp_path, script, args, name):
    env = {"ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], check=True, env=env,
                   cwd=ROOT, capture_output=True, timeout=300)
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["rows"] and data["env"]["torch"]
