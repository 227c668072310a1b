"""Session 6, issue 3: one fwd+bwd of noise-once at T=16K with session 5's dK/dQ kernel ("loop") and
the lean one (NT=1, NT=2), for Nsight Compute to read the dK kernels' counters:

    ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        --section WarpStateStats --section Occupancy -k regex:_noise_bwd_dk -c 3 \\
        python benchmarks/device_runs/session6_cmd_ncu.py
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_diff_kernel import make  # noqa: E402

from attnlab.ops.diff_attention import noise_once as NO  # noqa: E402

t = int(os.environ.get("T", "16384"))
ins = make(1, 16, t, 128, torch.bfloat16, "cuda", True)
dout = torch.randn(1, 16, t, 128, device="cuda", dtype=torch.bfloat16)
for mode, lean in (("loop", None), ("lean", (128, 128, 1, 8, 3, 8, 64, 1, False)),
                   ("lean", (128, 128, 2, 8, 3, 8, 64, 1, True))):
    NO.DK_MODE = mode
    if lean:
        NO.CONFIGS["lean"] = lean
    out = NO.cmd_attention_noise_once(*ins)
    torch.autograd.grad(out, ins, dout)
    torch.cuda.synchronize()
    print(mode, lean, "ok", flush=True)
