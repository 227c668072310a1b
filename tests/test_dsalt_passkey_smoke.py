"""Smoke test: the DSALT-vs-MHA passkey driver (benchmarks/dsalt_passkey.py) runs every phase
on the CPU with --quick and writes its table, JSON and plots."""

import importlib.util
import json
from pathlib import Path


def test_dsalt_passkey_quick(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dsalt_passkey.py"
    spec = importlib.util.spec_from_file_location("dsalt_passkey", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--quick", "--seeds", "1", "--out", str(tmp_path)])
    arms = [r["arm"] for r in rows]
    assert arms == ["mha", "dsalt", "mha +YaRN@eval", "dsalt +YaRN@eval", "dsalt n_max 128", "mha-yarn"]
    data = json.loads((tmp_path / "dsalt_passkey.json").read_text())
    assert not data["errors"] and data["setup"]["lengths"] == [128, 256, 512]
    for r in data["rows"]:
        assert all(0 <= v <= 1 for L in (128, 256, 512) for v in r[f"exact@{L}_seeds"])
    for f in ("dsalt_passkey.md", "passkey_vs_length.png", "passkey/compare.json", "passkey/loss_curves.png",
              "passkey_yarn/compare.json", "passkey_wide/compare.json"):
        assert (tmp_path / f).is_file(), f
