"""The differential attention benchmarks run end to end at tiny sizes (CPU) and write their JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_diff_kernel_quick(tmp_path):
    env = {**os.environ, "ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    old = ROOT / "attnlab" / "ops" / "diff_attention" / "noise_once.py"  # stands in for another commit's file
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_diff_kernel.py"), "--quick", "--host",
                    "--compare-module", str(old), "--compare-label", "noise-once, other", "--groups", "cmd,diff",
                    "--rounds", "2", "--paired", "2", "--noise-variants", "loop dK=loop:dk=[16,16,2,16,1,1,0,0]"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
    data = json.loads((tmp_path / "bench_diff_kernel.json").read_text())
    variants = {r["variant"] for r in data["rows"]}
    assert "fused triton" in variants and data["env"]["torch"]
    assert {"noise-once (sdpa signal + shared noise kernel)", "noise-once, other"} <= variants
    assert all(r["host_ms"] > 0 for r in data["rows"])
    assert all(r.get("rel_err_vs_sdpa", 0) < 1e-4 for r in data["rows"])
    loop = next(r for r in data["rows"] if r["variant"] == "noise-once, loop dK")
    assert loop["paired_pairs"] == 2 and loop["paired_ratio_q25"] <= loop["paired_ratio_median"] <= loop["paired_ratio_q75"]
    assert len(loop["ratio_per_round"]) == 2


def test_bench_train_step_diff_mixers_quick(tmp_path):
    env = {**os.environ, "ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--quick",
                    "--mixers", "mla,diff-mla,cmd-mla,diff-mha", "--name", "ts", "--interleave", "2"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "ts.json").read_text())["rows"]
    assert [r["mixer"] for r in rows] == ["mla", "diff-mla", "cmd-mla", "diff-mha"]


def test_bench_diff_latent_quick(tmp_path):
    env = {**os.environ, "ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_diff_latent.py"), "--quick"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "bench_diff_latent.json").read_text())["rows"]
    assert {r["variant"] for r in rows} == {"sdpa path", "fused latent", "noise-once path"}
    assert all(r["rel_err_vs_sdpa"] < 1e-4 for r in rows)


def test_noise_once_resources_quick(tmp_path):
    """The sm_90 compile report (no GPU): the default lean dK kernel compiles, its contraction loop
    has matrix instructions and no local-memory traffic."""
    triton = pytest.importorskip("triton")
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not ((tools / "ptxas").exists() and (tools / "cuobjdump").exists()):
        pytest.skip("this Triton ships no ptxas / cuobjdump")
    env = {**os.environ, "ATTNLAB_BENCH_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "noise_once_resources.py"), "--quick"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "noise_once_resources.json").read_text())["rows"]
    assert rows[0]["registers"] <= 255 and rows[0]["shared_bytes"] <= 232448
    inner = [x for x in rows[0]["loops"] if x["HGMMA"]]
    assert inner and all(x["LDL"] == 0 and x["STL"] == 0 for x in inner)
