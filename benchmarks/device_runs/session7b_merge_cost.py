"""Session 7 round 2 (issue 7): what the merge launch costs on the critical path of a B = 1 decode call at 32K.

For a launch configuration, three CUDA graphs of 16 calls over 8 cache copies (as bench_spectral.py --multi 16):
``full`` (block kernel + merge kernel, the real call), ``block`` (the block kernel's launches only: the merge launch
dropped from the replayed plan, outputs not written) and ``merge`` (the merge launch only, replayed 16 times on
the partials of the last call). full - block = the merge's cost on the critical path (launch, PDL wait, drain).
GPU only; prints one line per (ranks, config) and writes JSON through attnlab.bench.write_results.

    python benchmarks/device_runs/session7b_merge_cost.py --ranks 32:32,16:32 --configs default,v3:1:8:2:0:2:128:0:1:0:1
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import bench_spectral as bsp  # noqa: E402
from attnlab.bench import time_ms, write_results  # noqa: E402
from attnlab.caches.spectral import SpectralCache  # noqa: E402
from attnlab.ops.spectral import kernel as K  # noqa: E402
from attnlab.ops.spectral import spectral_decode  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", default="32:32")
    p.add_argument("--configs", default="default")
    p.add_argument("--length", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--merge-launch", default="32:4",
                   help="merge launches (value columns per program : warps, kernel.MERGE_LAUNCH) timed per config")
    args = p.parse_args()
    dev, dtype, b, hq, hk, d, t = torch.device("cuda"), torch.bfloat16, 1, 32, 8, 128, args.length
    k = bsp.synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=1)
    v = bsp.synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=2)
    q = torch.randn(b, hq, 1, d, device=dev, dtype=dtype) * 2.0
    rows = []
    for rk, rv in [tuple(int(x) for x in r.split(":")) for r in args.ranks.split(",")]:
        c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=dtype, key_rank=rk, value_rank=rv, block_size=512)
        c.append(k[:, :, :t], v[:, :, :t])
        c.append(k[:, :, t:], v[:, :, t:])
        bufs = (c.ck, c.sk, c.bk, c.cv, c.sv, c.bv, c.hot_k, c.hot_v)
        copies = [bufs] + [tuple(x.clone() if x is not None else None for x in bufs) for _ in range(7)]
        for kw, ml in [(kw, tuple(int(x) for x in m.split(":"))) for kw in bsp.parse_configs(args.configs)
                       for m in args.merge_launch.split(",")]:
            name = bsp.config_name(kw) + f" merge{ml[0]}x{ml[1]}w"
            K.MERGE_LAUNCH = ml
            K._V2_PLANS.clear()

            def one(i, kw=kw):
                ck, sk, bk, cv, sv, bv, hk_, hv_ = copies[i % 8]
                return spectral_decode(q, ck, sk, bk, cv, sv, bv, c.n_blocks, hk_, hv_, c.hot_len, d**-0.5, **kw)

            for i in range(8):
                one(i)
            torch.cuda.synchronize()
            full = bsp.multi_graph_ms(one, 16, 10, args.repeats)
            saved = dict(K._V2_PLANS)
            keys = [key for key, (rec, _) in saved.items() if rec is not None and rec[1] is not None]
            merge_rec = saved[keys[-1]][0][1] if keys else None
            for key in keys:  # drop the merge launch from the replayed plans: the block kernels only
                rec, plan = saved[key]
                K._V2_PLANS[key] = ((rec[0], None), plan)
            block = bsp.multi_graph_ms(one, 16, 10, args.repeats)
            K._V2_PLANS.clear()
            K._V2_PLANS.update(saved)
            merge = None
            if merge_rec is not None:
                def m_only(i):
                    run, fn, meta, g0, g1, tpl = merge_rec
                    run(g0, g1, 1, torch.cuda.current_stream().cuda_stream, fn, meta, None, None, None, *tpl)
                merge = bsp.multi_graph_ms(m_only, 16, 10, args.repeats)
            row = dict(B=b, T=t, key_rank=rk, value_rank=rv, config=name, full_us=round(full * 1e3, 2),
                       block_only_us=round(block * 1e3, 2), merge_only_us=None if merge is None else round(merge * 1e3, 2),
                       merge_on_path_us=round((full - block) * 1e3, 2))
            K._V2_PLANS.clear()
            print(row, flush=True)
            rows.append(row)
        del copies
    dense = bsp.multi_graph_ms(lambda i: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, scale=d**-0.5, enable_gqa=True), 16, 10, args.repeats)
    print({"dense_graph16_us_same_copy": round(dense * 1e3, 2)}, flush=True)
    write_results("s7b_merge_cost", rows, extra={"command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
