# Session 9 lead: host-time profile of one DSALT fwd+bwd at T=4K (B=1, 16 heads, d 128, window 512, 64 landmarks,
# bf16): host enqueue vs wall per step, then cProfile (tottime / cumulative). Run: PYTHONPATH=$PWD python benchmarks/device_runs/dsalt_s9_host_prof.py
import cProfile, pstats, time, io, sys
import torch
from attnlab.ops.dsalt import dsalt_attention
t, heads, d, window = 4096, 16, 128, 512
torch.manual_seed(0)
q, k, v = (torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
win = torch.full((1, heads, t), float(window), device="cuda", requires_grad=True)
e = torch.randn(1, heads, t, device="cuda", requires_grad=True)
do = torch.randn(1, heads, t, d, device="cuda", dtype=torch.bfloat16)
def step():
    out = dsalt_attention(q, k, v, win, e, n_max=window, n_landmarks=64, edge=4.0, block=64, impl="triton")
    out.backward(do)
    for x in (q, k, v, win, e):
        x.grad = None
for _ in range(20):
    step()
torch.cuda.synchronize()
n = 200
t0 = time.perf_counter()
for _ in range(n):
    step()
host = (time.perf_counter() - t0) / n * 1e3
torch.cuda.synchronize()
gpu = (time.perf_counter() - t0) / n * 1e3
print(f"host enqueue {host:.3f} ms/step, wall {gpu:.3f} ms/step")
pr = cProfile.Profile()
pr.enable()
for _ in range(n):
    step()
pr.disable()
torch.cuda.synchronize()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(35)
print(s.getvalue()[:9000])
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(40)
print(s.getvalue()[:9000])
