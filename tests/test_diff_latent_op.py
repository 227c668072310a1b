"""The fused latent kernel as a torch.library op (ops/diff_attention/latent_op.py): the op's
registrations (fake tensors, autograd) pass torch.library.opcheck, it equals the autograd.Function
forward and backward, and torch.compile of a function calling ``latent_diff_attention`` keeps the
op in its graph and gives the eager result. CPU: the Triton interpreter in fp32; on a GPU (run
these unfiltered there) the same tests in bf16, where op and function launch the same kernels."""

import pytest
import torch

pytest.importorskip("triton")

from attnlab.ops.diff_attention import latent_diff_attention, latent_diff_reference  # noqa: E402
from attnlab.ops.diff_attention.latent_op import _pack, latent_diff_fwd, latent_diff_op  # noqa: E402
from attnlab.testing import rel_err  # noqa: E402

from test_diff_latent import DEV, GEOMS, _inputs  # noqa: E402

DT = torch.bfloat16 if DEV == "cuda" else torch.float32


@pytest.mark.parametrize("geom", ["diff-mla", "cmd-mla"])
def test_op_equals_function_forward_and_backward(geom):
    g = GEOMS[geom]
    ins, cos, sin = _inputs(g, 2, 13, DT)
    out_fn = latent_diff_attention(*ins, cos, sin, g)
    out_op = latent_diff_op(*ins, cos, sin, g)
    gr = torch.randn_like(out_fn)
    got = torch.autograd.grad(out_op, ins, gr)
    want = torch.autograd.grad(out_fn, ins, gr)
    assert rel_err(out_op, out_fn) <= 1e-6
    for x, y in zip(got, want):
        assert rel_err(x, y) <= 1e-6


def test_opcheck():
    g = GEOMS["cmd-mla"]
    ins, cos, sin = _inputs(g, 1, 9, DT)
    gi, gf = _pack(g)
    torch.library.opcheck(latent_diff_fwd, (*ins, cos, sin, gi, gf),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compiled_call_keeps_the_op_and_matches():
    g = GEOMS["diff-mla"]
    ins, cos, sin = _inputs(g, 1, 11, DT)
    seen = []

    def backend(gm, example_inputs):  # record the traced graph, run it as is
        seen.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    fn = torch.compile(lambda a, b, c, d: latent_diff_attention(a, b, c, d, cos, sin, g) * 2, backend=backend,
                       fullgraph=True)
    out = fn(*ins)
    assert any("latent_diff_fwd" in s for s in seen), seen
    eager = latent_diff_attention(*ins, cos, sin, g) * 2
    gr = torch.randn_like(out)
    got = torch.autograd.grad(out, ins, gr)
    want_eager = torch.autograd.grad(eager, ins, gr)
    assert rel_err(out, eager) <= 1e-6
    for x, y in zip(got, want_eager):
        assert rel_err(x, y) <= 1e-6
    if DT == torch.float32:
        ref = latent_diff_reference(*[x.double() for x in ins], cos.double(), sin.double(), g) * 2
        assert rel_err(out, ref) <= 1e-5
        for x, y in zip(got, torch.autograd.grad(ref, ins, gr.double())):
            assert rel_err(x, y) <= 1e-5
