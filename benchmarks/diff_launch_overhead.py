"""Host (CPU) cost of the fused latent differential kernel's launcher, measured on CPU.

Eager diff-mla / cmd-mla training at the shakespeare-384 size is bound by host time, so this
isolates what the launcher (ops/diff_attention/latent.py) costs in Python around its Triton
kernels, without a GPU:

1. ``launcher us``: forward + backward of ``latent_diff_attention`` (autograd.grad) on tiny CPU
   tensors with every Triton kernel replaced by a no-op stand-in (its ``kernel[grid](...)``
   returns a fake compiled kernel whose launcher does nothing). This is the Python work of the
   launcher itself: views, strides, allocations, the autograd.Function, the torch ops around the
   kernels; with replay on (the default), the replay of recorded launches. Triton's own
   ``kernel[grid]`` binding is NOT in this figure (the stand-in costs ~nothing), see 2.
2. ``jit bind us``: what Triton's ``kernel[grid](...)`` costs on top, per call, for the slow path's
   launches: its argument binder and cache key (``create_function_from_signature`` for an sm_90
   target, called with the slow path's real arguments). Replay skips it.
3. ``torch ops``: aten ops dispatched in forward + backward (TorchDispatchMode; views separate).

Shapes: H = 6 heads, dn 64, dr 32, dv 64 (diff-mla; cmd-mla with one 64-wide noise head). The
GPU figure is bench_train_step.py; this only compares versions of the launcher on one CPU.

    python benchmarks/diff_launch_overhead.py              # replay on and off
    python benchmarks/diff_launch_overhead.py --quick
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels are stand-ins; keep triton off the driver

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from attnlab.bench import write_results  # noqa: E402
from attnlab.ops.diff_attention import LatentGeometry, latent_diff_attention  # noqa: E402
from attnlab.ops.diff_attention import latent as K  # noqa: E402
from attnlab.positions import RotaryEmbedding  # noqa: E402

GEOMS = {
    "diff-mla": LatentGeometry(6, 6, 64, 32, 64, 64, 1, 96**-0.5, 96**-0.5),
    "cmd-mla": LatentGeometry(6, 1, 64, 32, 64, 64, 0, 96**-0.5, 64**-0.5),
}
KERNELS = ("_lat_fwd_kernel", "_lat_pre_kernel", "_lat_bwd_kv_kernel", "_lat_bwd_q_kernel", "_rope_kernel",
           "_head_sum_kernel")
VIEWS = {"view", "_unsafe_view", "transpose", "t", "split", "split_with_sizes", "slice", "expand", "as_strided",
         "detach", "unsqueeze", "squeeze", "permute", "alias", "select", "unbind", "_reshape_alias", "reshape"}


class _Compiled:
    function = packed_metadata = None

    @property
    def run(self):
        return _noop


def _noop(*args):
    pass


class _Stub:
    """Stands in for a @triton.jit kernel: records the slow path's calls, launches nothing."""

    def __init__(self, real, calls):
        self.real, self.calls = real, calls

    def __getitem__(self, grid):
        def launch(*args, **opts):
            self.calls.append((self.real, args, opts))
            return _Compiled()
        return launch


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


_REAL: dict = {}


def _install(calls, replay: bool):
    for k in KERNELS:
        if hasattr(K, k):
            real = _REAL.setdefault(k, getattr(K, k))
            setattr(K, k, _Stub(real, calls))
    if hasattr(K, "_fast_ok"):  # this version replays recorded launches
        import types
        K._fast_ok = (lambda: True) if replay else (lambda: False)
        K._PLANS.clear()
        active = types.SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda d: 0)
        K._driver = types.SimpleNamespace(active=active)
        K._knobs = types.SimpleNamespace(runtime=types.SimpleNamespace(launch_enter_hook=None,
                                                                       launch_exit_hook=None))
        return True
    return False


def _bind_cost_us(calls, reps: int) -> float:
    """Triton's binder + cache key per slow-path launch (microseconds, summed over the calls)."""
    try:  # triton internals (3.4+); other versions: not measured
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

        backend = make_backend(GPUTarget("cuda", 90, 32))
    except Exception:  # noqa: BLE001
        return float("nan")
    total = 0.0
    for real, args, opts in calls:
        fn = real if isinstance(real, JITFunction) else JITFunction(real.fn)  # interpreter: wrap the source
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        kw = dict(opts, debug=False)
        key_cache: dict = {}

        def once():
            bound, spec, options = binder(*args, **kw)
            compute_cache_key(key_cache, spec, options)
        once()
        t0 = time.perf_counter()
        for _ in range(reps):
            once()
        total += (time.perf_counter() - t0) / reps * 1e6
    return total


def measure(name: str, replay: bool, args) -> dict:
    g = GEOMS[name]
    calls: list = []
    has_replay = _install(calls, replay)
    b, t = args.batch, args.seq
    torch.manual_seed(0)
    ins = [torch.randn(b, t, g.q_width, requires_grad=True), torch.randn(b, t, g.kv_width, requires_grad=True),
           torch.randn(b, t, g.dr, requires_grad=True), torch.rand(1).expand(g.heads).requires_grad_()]
    cos, sin = RotaryEmbedding(g.dr).cos_sin(0, t)
    dout = torch.randn(b, t, g.heads, g.dv)

    def step():
        out = latent_diff_attention(*ins, cos, sin, g)
        torch.autograd.grad(out, ins, dout)

    for _ in range(3):
        step()
    calls.clear()
    step()
    slow_calls = list(calls)  # launches that went through kernel[grid] (not replayed)
    counter = _Count()
    with counter:
        step()
    ops = sum(v for k, v in counter.counts.items() if k not in VIEWS)
    views = sum(counter.counts.values()) - ops
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.inner):
            step()
        times.append((time.perf_counter() - t0) / args.inner * 1e6)
    bind = _bind_cost_us(slow_calls, args.bind_reps) if slow_calls else 0.0
    launcher = statistics.median(times)
    return {"mixer": name, "replay": replay and has_replay, "jit launches": len(slow_calls),
            "torch ops": ops, "views": views, "launcher us": round(launcher, 1), "jit bind us": round(bind, 1),
            "sum us/layer": round(launcher + bind, 1), "x6 layers ms": round(6 * (launcher + bind) / 1e3, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixers", default="diff-mla,cmd-mla")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--inner", type=int, default=50)
    p.add_argument("--bind-reps", type=int, default=300)
    p.add_argument("--modes", default="replay,slow", help="replay and/or slow (replay off)")
    p.add_argument("--name", default="diff_launch_overhead_cpu")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.inner, args.bind_reps, args.name = 2, 2, 3, "diff_launch_overhead_quick"
    torch.set_num_threads(1)
    rows = [measure(m.strip(), mode == "replay", args) for m in args.mixers.split(",")
            for mode in args.modes.split(",")]
    write_results(args.name, rows, {"config": {"batch": args.batch, "seq": args.seq, "argv": sys.argv[1:],
                                               "note": "CPU host time; Triton kernels replaced by no-op stand-ins"}})


if __name__ == "__main__":
    main()
