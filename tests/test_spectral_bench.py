"""Smoke tests: the spectral benchmark and fidelity scripts run end to end with --quick."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_bench_spectral_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_BENCH_DIR", str(tmp_path))
    # the GPU-only measures (--multi, --profile, --floor) are parsed and skipped on CPU
    assert load("bench_spectral").main(["--quick", "--name", "t", "--multi", "4", "--profile", "--floor"]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    rows = data["rows"]
    assert rows and rows[0]["compression"] > 1
    if "kernel_vs_ref_err" in rows[0]:
        assert rows[0]["kernel_vs_ref_err"] < 1e-4
    assert {"default", "v1", "v3:2:-:-:-:-:-:-"} <= {r["config"] for r in data["sweep"]}
    assert all(r["err"] < 1e-4 for r in data["sweep"])


def test_spectral_fidelity_quick(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("ATTNLAB_BENCH_DIR", str(tmp_path))
    assert load("spectral_fidelity").main(["--quick", "--name", "f"]) == 0
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"attnlab-char", "hf-llama"}
    exact = [r for r in rows if r["quant"] == "none"]
    assert exact and all(r["attn_rel_err"] < 1e-5 and r["next_token_agree"] == 1.0 for r in exact)
