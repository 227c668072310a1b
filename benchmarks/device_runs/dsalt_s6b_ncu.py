"""The DSALT selection kernel alone at T = 32K (16 heads, 64 landmarks, block 64) for Nsight Compute:
    ncu --clock-control none --section WarpStateStats --section SourceCounters -k regex:_select_kernel -c 1 \
        python benchmarks/device_runs/dsalt_s6b_ncu.py"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from attnlab.ops.dsalt import kernel as K  # noqa: E402

e = torch.randn(1, 16, 32768, device="cuda")
for _ in range(2):
    K._select_stable(e, 64, 64, 64)
torch.cuda.synchronize()
