"""One DSALT fwd+bwd step, run twice, for Nsight Compute on the landmark backward kernel (session 8).

T (default 32K), B=1, 16 heads, head dim 128, window 512, soft edge 4, 64 landmarks, selection block
64, bf16, the first launch config of every list (ATTNLAB_DSALT_AUTOTUNE=0: no autotuning, so the
profiled process compiles one config per kernel), the landmark backward of OPTS["lm_bwd"] = argv[1]
("trans": _lm_bwd_t_kernel, the default; "atomic": _lm_bwd_kernel). Profile the second step's launch:

    ncu --clock-control none --section WarpStateStats --section SpeedOfLight --section LaunchStats \\
        -k regex:_lm_bwd -s 1 -c 1 -o lm python benchmarks/device_runs/dsalt_s8_ncu.py trans

(benchmarks/device_runs/dsalt_s8.sh runs it after the A/B). --quick: a tiny CPU run in the
interpreter (CI smoke test).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("ATTNLAB_DSALT_AUTOTUNE", "0")
if "--quick" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from attnlab.ops.dsalt import dsalt_attention  # noqa: E402
from attnlab.ops.dsalt import kernel as K  # noqa: E402


def main(argv):
    quick = "--quick" in argv
    args = [a for a in argv if a != "--quick"]
    K.OPTS["lm_bwd"] = args[0] if args else "trans"
    if quick:
        t, heads, d, window, n_lm, block, dev, dt = 40, 2, 16, 8, 4, 16, "cpu", torch.float32
    else:
        t = int(args[1]) if len(args) > 1 else 32768
        heads, d, window, n_lm, block, dev, dt = 16, 128, 512, 64, 64, "cuda", torch.bfloat16
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, t, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    win = torch.full((1, heads, t), float(window), device=dev, requires_grad=True)
    e = torch.randn(1, heads, t, device=dev, requires_grad=True)
    do = torch.randn(1, heads, t, d, device=dev, dtype=dt)
    for _ in range(1 if quick else 2):
        out = dsalt_attention(q, k, v, win, e, n_max=window, n_landmarks=n_lm, edge=4.0, block=block, impl="triton")
        out.backward(do)
    if dev == "cuda":
        torch.cuda.synchronize()
    print("ok", K.OPTS["lm_bwd"], t, float(q.grad.float().abs().mean()))


if __name__ == "__main__":
    main(sys.argv[1:])
