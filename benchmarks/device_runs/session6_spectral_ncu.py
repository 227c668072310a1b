"""Session 6: one eager spectral decode call (B = 1, T = 32K, 8 KV / 32 query heads, d = 128, bf16) per
listed configuration, for Nsight Compute to profile (run under ``ncu -k regex:_spectral_v3|_merge_v2``):

    ncu --clock-control none --set full -k regex:"_spectral_v3|_merge_v2" -c 8 -o rep \
        python benchmarks/device_runs/session6_spectral_ncu.py 16:16:base 32:32:base 16:32:base 16:16:pre

Each item is key_rank:value_rank:variant (base = the session-5b default launch, pre / pre2 = prefetch 1 / 2, s3 = 3 stages,
fused = one-level fused merge). Also prints the compiled kernels' registers / spills."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_spectral import synthetic_kv  # noqa: E402

from attnlab.caches.spectral import SpectralCache  # noqa: E402
from attnlab.ops.spectral import spectral_decode  # noqa: E402

VARIANTS = {"base": dict(impl="v3", split=2, num_warps=4, num_stages=2, blocks_per_program=4, pdl=True),
            "pre": dict(impl="v3", split=2, num_warps=4, num_stages=1, blocks_per_program=4, pdl=True, prefetch=1),
            "pre2": dict(impl="v3", split=2, num_warps=4, num_stages=1, blocks_per_program=4, pdl=True, prefetch=2),
            "s3": dict(impl="v3", split=2, num_warps=4, num_stages=3, blocks_per_program=4, pdl=True),
            "new": dict(impl="v3"),
            "v4": dict(impl="v4", l2_prefetch=True),  # the launcher's default (session 6: prefetch and L2 prefetch at one wave)
            "fused": dict(impl="v3", split=2, num_warps=4, num_stages=2, blocks_per_program=4, pdl=True,
                          fused_merge=True, merge_group=64)}


def main():
    b, hk, hq, d, t = 1, 8, 32, 128, 32768
    dev, dtype = torch.device("cuda"), torch.bfloat16
    k = synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=1)
    v = synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=2)
    q = torch.randn(b, hq, 1, d, device=dev, dtype=dtype) * 2.0
    for item in sys.argv[1:]:
        rk, rv, var = item.split(":")
        c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=dtype, key_rank=int(rk), value_rank=int(rv), block_size=512)
        c.append(k, v)
        torch.cuda.synchronize()
        out = spectral_decode(q, c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len,
                              **VARIANTS[var])
        torch.cuda.synchronize()
        print(item, "out norm", out.float().norm().item(), flush=True)
        del c
    from attnlab.ops.spectral import jit_v3
    for key, kern in getattr(jit_v3._spectral_v3, "device_caches", {}).items():
        try:
            for kk, compiled in kern[0].items():
                print("compiled", compiled.metadata.name, "regs", compiled.n_regs, "spills", compiled.n_spills,
                      "shared", compiled.metadata.shared, flush=True)
        except Exception as e:  # noqa: BLE001 - diagnostics only
            print("no compiled info:", e)


if __name__ == "__main__":
    main()
