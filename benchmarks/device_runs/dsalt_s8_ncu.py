"""One DSALT fwd+bwd step at T (default 32K; B=1, 16 heads, head dim 128, window 512, 64 landmarks,
bf16, first launch configs: no autotuning) with the landmark backward of OPTS["lm_bwd"] = argv[1]
("trans": _lm_bwd_t_kernel, "pipe": _lm_bwd_p_kernel), run twice (the second step is the one to
profile: `ncu -k regex:_lm_bwd -s 1 -c 1`). Session 8: Nsight Compute stall reasons of the
landmark backward kernels.

    ATTNLAB_DSALT_AUTOTUNE=0 ncu --section WarpStateStats -k regex:_lm_bwd -s 1 -c 1 \\
        python benchmarks/device_runs/dsalt_s8_ncu.py pipe
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("ATTNLAB_DSALT_AUTOTUNE", "0")

from attnlab.ops.dsalt import dsalt_attention  # noqa: E402
from attnlab.ops.dsalt import kernel as K  # noqa: E402


def main():
    K.OPTS["lm_bwd"] = sys.argv[1] if len(sys.argv) > 1 else "trans"
    t = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16, t, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    win = torch.full((1, 16, t), 512.0, device="cuda", requires_grad=True)
    e = torch.randn(1, 16, t, device="cuda", requires_grad=True)
    do = torch.randn(1, 16, t, 128, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        out = dsalt_attention(q, k, v, win, e, n_max=512, n_landmarks=64, edge=4.0, block=64, impl="triton")
        out.backward(do)
    torch.cuda.synchronize()
    print("ok", K.OPTS["lm_bwd"], t)


if __name__ == "__main__":
    main()
