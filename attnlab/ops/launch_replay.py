"""Launch replay for Triton kernels: skip ``kernel[grid](...)``'s per-call argument handling.

A ``kernel[grid](*args, **kwargs)`` launch binds every argument in Python, computes the
specialisation key (integer divisibility, pointer alignment, dtypes), looks the compiled kernel up,
builds launch metadata and finally calls the compiled launcher. Where a step is bound by host time
(B=1, short sequences) that per-launch work shows. ``ReplayLauncher`` launches the normal way the
first time it sees a *key* and records the compiled kernel's launcher; later launches with the same
key call that launcher directly with the new arguments (tensors as data pointers).

The key is built from every argument: integers and other scalars by value, tensors by (dtype,
device, 16-byte alignment of the data pointer), the grid and the keyword arguments (constexprs,
``num_warps``, ...). Everything Triton specialises on is therefore part of the key, so a replayed
launch runs the very kernel a normal launch would. Constexpr defaults are filled from the Python
signature, giving the launcher the full argument list in parameter order (what
``JITFunction.run`` passes).

Replay is skipped (normal launch) under the interpreter (``TRITON_INTERPRET=1``), when a Triton
launch hook is set (a profiler: Triton >= 3.4 keeps hooks in ``HookChain`` objects that are never
None, so the check looks at their calls), when ``ATTNLAB_FAST_LAUNCH=0``, where the installed
Triton lacks the pieces used, and for kernels behind an ``Autotuner`` (launch the picked config
directly instead). If a replay raises, that launcher falls back to normal launches for good.
"""

from __future__ import annotations

import inspect
import os
import warnings

import torch

try:
    from triton import knobs as _knobs
    from triton.runtime.driver import driver as _driver
    from triton.runtime.jit import JITFunction as _JITFunction
except ImportError:  # triton missing or too old: normal launches only
    _knobs = _driver = _JITFunction = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """Whether replay can run here at all (triton pieces present, not the interpreter, not off)."""
    return (_knobs is not None and os.environ.get("ATTNLAB_FAST_LAUNCH", "1") != "0"
            and not _interpreting())


def hook_set(hook) -> bool:
    """Whether a Triton launch hook is installed: a HookChain (triton >= 3.4) with calls, or (older
    triton) any non-None hook."""
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return bool(calls) if isinstance(calls, list) else True


def hooks_set() -> bool:
    rt = _knobs.runtime
    return hook_set(getattr(rt, "launch_enter_hook", None)) or hook_set(getattr(rt, "launch_exit_hook", None))


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.device.index, a.data_ptr() % 16 == 0)
    return a


class DescArg:
    """A replayed launch's host tensor descriptor (TMA): what a compiled launcher reads of one
    (``base.data_ptr()``, ``shape``, ``strides``, ``padding``), on a new data pointer. Replays of kernels
    taking host ``TensorDescriptor`` arguments pass these instead of building descriptors in Python."""

    __slots__ = ("ptr", "shape", "strides", "padding")

    def __init__(self, ptr, shape, strides, padding):
        self.ptr, self.shape, self.strides, self.padding = ptr, shape, strides, padding

    @property
    def base(self):
        return self

    def data_ptr(self):
        return self.ptr


class ReplayLauncher:
    """``launcher(kernel, grid, *args, **kwargs)`` = ``kernel[grid](*args, **kwargs)``, replayed
    from the second call of each key on (see the module docstring). ``stats`` counts normal
    launches and replays (tests assert the replay ran)."""

    def __init__(self, name: str = "", max_plans: int = 512):
        self.name = name
        self.max_plans = max_plans
        self.plans: dict = {}  # key -> (run, function, metadata, grid, template, tensor slots) or None
        self.broken = False
        self.stats = {"normal": 0, "replayed": 0}

    def __call__(self, kernel, grid, *args, **kwargs):
        fast = not self.broken and available() and isinstance(kernel, _JITFunction)
        if fast:
            key = (id(kernel), tuple(grid), tuple(map(_arg_key, args)), tuple(kwargs.items()))
            plan = self.plans.get(key, False)
            if plan and not hooks_set():
                try:
                    self._replay(plan, args, kwargs)
                    self.stats["replayed"] += 1
                    return None
                except Exception as e:  # noqa: BLE001 - the launcher rejected it: normal launches from now on
                    warnings.warn(f"{self.name}: launch replay failed ({e!r}); using normal launches")
                    self.broken = True
        compiled = kernel[grid](*args, **kwargs)
        self.stats["normal"] += 1
        if fast and plan is False and compiled is not None:
            if len(self.plans) >= self.max_plans:
                self.plans.clear()
            self.plans[key] = self._make_plan(kernel, compiled, grid, args, kwargs)
        return compiled

    @staticmethod
    def _make_plan(kernel, compiled, grid, args, kwargs):
        """(run, function, packed metadata, grid, full argument template, (index, position in
        args) of each tensor argument) or None (not replayable: normal launches for this key)."""
        try:
            if hasattr(compiled, "result"):
                compiled = compiled.result()
            sig = inspect.signature(kernel.fn)
            opts = {k: v for k, v in kwargs.items() if k in sig.parameters}
            bound = sig.bind(*args, **opts)
            bound.apply_defaults()
            full = list(bound.arguments.values())
            if len(full) != len(kernel.arg_names):
                return None
            slots = []
            for j, a in enumerate(full):  # positional arguments come first, in parameter order
                if isinstance(a, torch.Tensor):
                    if j >= len(args) or a is not args[j]:  # a tensor passed by keyword: not handled
                        return None
                    slots.append((j, j))
                    full[j] = None
            g = tuple(grid) + (1, 1)
            return (compiled.run, compiled.function, compiled.packed_metadata, g[:3], full, tuple(slots))
        except Exception:  # noqa: BLE001 - any surprise: never replay this key
            return None

    @staticmethod
    def _replay(plan, args, kwargs):
        run, fn, meta, (g0, g1, g2), tpl, slots = plan
        full = tpl.copy()
        for j, i in slots:
            full[j] = args[i].data_ptr()
        dev = _driver.active.get_current_device()
        stream = _driver.active.get_current_stream(dev)
        run(g0, g1, g2, stream, fn, meta, None, None, None, *full)


def _stream():
    dev = _driver.active.get_current_device()
    return _driver.active.get_current_stream(dev)


class Desc:
    """A host TMA tensor descriptor's fields over a tensor (``base``), made without TensorDescriptor's
    checks (the caller checked once): turned into a real descriptor for a normal launch (Triton's
    ``triton.tools`` one, or Gluon's where a shared-memory ``layout`` is given) and handed as it is to a
    replayed launch, whose compiled launcher reads base, shape, strides and padding."""

    __slots__ = ("base", "shape", "strides", "block_shape", "layout", "padding")

    def __init__(self, base, shape, strides, block_shape, layout=None):
        self.base, self.shape, self.strides, self.block_shape = base, shape, strides, block_shape
        self.layout, self.padding = layout, "zero"

    def key(self):
        return ("desc", self.base.dtype, self.base.device.index, tuple(self.shape), tuple(self.strides),
                tuple(self.block_shape), self.base.data_ptr() % 16 == 0)

    def real(self):
        if self.layout is None:
            from triton.tools.tensor_descriptor import TensorDescriptor

            return TensorDescriptor(self.base, self.shape, self.strides, self.block_shape)
        from .gluon_compat import TensorDescriptor

        return TensorDescriptor(self.base, self.shape, self.strides, self.block_shape, self.layout)


class DescLauncher(ReplayLauncher):
    """A ReplayLauncher that also takes descriptor arguments (``Desc``): keyed by dtype, shape, strides,
    block and alignment, made real for a normal launch and passed as they are to a replayed one (no
    TensorDescriptor built on the host per call). Used by hopper.py and the Gluon kernels."""

    def __call__(self, kernel, grid, *args, **kwargs):
        fast = not self.broken and available()
        key = plan = None
        if fast:
            key = (id(kernel), tuple(grid), tuple(a.key() if isinstance(a, Desc) else _arg_key(a) for a in args),
                   tuple(kwargs.items()))
            plan = self.plans.get(key, False)
            if plan and not hooks_set():
                try:
                    run, fn, meta, (g0, g1, g2), tpl, slots = plan
                    full = tpl.copy()
                    for j in slots:
                        a = args[j]
                        full[j] = a if isinstance(a, Desc) else a.data_ptr()
                    run(g0, g1, g2, _stream(), fn, meta, None, None, None, *full)
                    self.stats["replayed"] += 1
                    return None
                except Exception as e:  # noqa: BLE001 - normal launches from now on
                    warnings.warn(f"{self.name}: launch replay failed ({e!r}); using normal launches")
                    self.broken = True
        compiled = kernel[grid](*[a.real() if isinstance(a, Desc) else a for a in args], **kwargs)
        self.stats["normal"] += 1
        if fast and plan is False and compiled is not None:
            if len(self.plans) >= self.max_plans:
                self.plans.clear()
            self.plans[key] = self._desc_plan(kernel, compiled, grid, args, kwargs)
        return compiled

    @staticmethod
    def _desc_plan(kernel, compiled, grid, args, kwargs):
        """(run, function, metadata, grid, full argument template, positional slots of tensors and
        descriptors) or None (never replay this key)."""
        try:
            if hasattr(compiled, "result"):
                compiled = compiled.result()
            sig = inspect.signature(kernel.fn)
            bound = sig.bind(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
            bound.apply_defaults()
            full = list(bound.arguments.values())
            if len(full) != len(kernel.arg_names) or len(args) > len(full):
                return None
            slots = tuple(j for j, a in enumerate(args) if isinstance(a, (torch.Tensor, Desc)))
            for j in slots:
                full[j] = None
            g = tuple(grid) + (1, 1)
            return (compiled.run, compiled.function, compiled.packed_metadata, g[:3], full, slots)
        except Exception:  # noqa: BLE001 - never replay this key
            return None
