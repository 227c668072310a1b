"""Session 7: one eager spectral decode call (B = 1, T = 32K, 8 KV / 32 query heads, d = 128, bf16) per listed item,
for Nsight Compute to profile (``ncu -k regex:_spectral_v`` ...). An item is
key_rank:value_rank:<bench_spectral.py --configs item>, e.g. ``32:32:default@token`` (the value coefficients in that
storage layout) or ``32:32:v3:1:4:2:0:2:0:8:1:0:1@rank``."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_spectral import in_layout, parse_configs, synthetic_kv  # noqa: E402

from attnlab.caches.spectral import SpectralCache  # noqa: E402
from attnlab.ops.spectral import spectral_decode  # noqa: E402


def main():
    b, hk, hq, d, t = 1, 8, 32, 128, 32768
    dev, dtype = torch.device("cuda"), torch.bfloat16
    k = synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=1)
    v = synthetic_kv(b, hk, t + 1, d, dev, dtype, seed=2)
    q = torch.randn(b, hq, 1, d, device=dev, dtype=dtype) * 2.0
    for item in sys.argv[1:]:
        rk, rv, cfg = item.split(":", 2)
        kw = parse_configs(cfg)[0]
        lay = kw.pop("_cv_layout", None)
        c = SpectralCache(b, t + 1, hk, d, device=dev, dtype=dtype, key_rank=int(rk), value_rank=int(rv), block_size=512)
        c.append(k, v)
        cv = in_layout(c.cv, lay)
        torch.cuda.synchronize()
        out = spectral_decode(q, c.ck, c.sk, c.bk, cv, c.sv, c.bv, c.n_blocks, c.hot_k, c.hot_v, c.hot_len, **kw)
        torch.cuda.synchronize()
        print(item, kw, "out norm", out.float().norm().item(), flush=True)
        del c, cv


if __name__ == "__main__":
    main()
