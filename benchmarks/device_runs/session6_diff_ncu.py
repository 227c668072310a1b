"""One hopper.py fwd+bwd at B=1, 16 heads, d 128, T=4096 (module defaults), for Nsight Compute:
    ncu --clock-control none --section WarpStateStats --section Occupancy -k regex:_h_bwd_kv -c 1 \\
        python benchmarks/device_runs/session6_diff_ncu.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from attnlab.ops.diff_attention import hopper as Hp  # noqa: E402

g = lambda: torch.randn(1, 16, 4096, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
ins = [g() for _ in range(5)] + [(0.2 + 0.5 * torch.rand(16, device="cuda")).requires_grad_()]
out = Hp.diff_attention_hopper(*ins)
torch.autograd.grad(out, ins, torch.randn_like(out))
torch.cuda.synchronize()
print("done", Hp.BWD_MODE, Hp.CONFIGS)
