"""The fused consistency losses against their plain-PyTorch references."""

import os
import platform
import subprocess
import sys

import pytest
import torch
from conftest import DEVICES, assert_close

import invfast
from invfast import _ops
from invfast import losses as L
from invfast.reference import losses as R

OPS = ["kl_consistency", "symmetric_kl", "mse_consistency", "js_consistency", "fixmatch_loss"]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (atol, rtol) of losses and of gradients by dtype. Half-precision inputs are
# widened and compared with a float32 reference on the same (rounded) values;
# their gradients are stored in the input's dtype.
TOL = {
    torch.float64: ((1e-10, 1e-9), (1e-12, 1e-9)),
    torch.float32: ((2e-5, 1e-4), (1e-6, 1e-4)),
    torch.float16: ((2e-4, 1e-3), (2e-4, 1e-2)),
    torch.bfloat16: ((2e-4, 1e-3), (2e-3, 2e-2)),
}

needs_kernels = pytest.mark.skipif(
    not all(_ops.has_kernel(op, "cpu") for op in OPS), reason="compiled kernels not loaded"
)
pytestmark = needs_kernels


def logits(shape, device, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype)


def make_mask(kind, shape, device):
    rows = (shape[0], *shape[2:])
    g = torch.Generator().manual_seed(7)
    if kind is None:
        return None
    if kind == "bool":
        m = torch.rand(rows, generator=g) > 0.4
        m.view(-1)[0] = True
        return m.to(device)
    return torch.rand(rows, generator=g, dtype=torch.float64).to(device)


# name -> (fused, reference, number of differentiable inputs, kwargs)
PAIRS = {
    "kl": (L.kl_consistency, R.kl_consistency, {"teacher_temperature": 0.4}),
    "kl_both": (
        L.kl_consistency,
        R.kl_consistency,
        {"temperature": 2.0, "detach_teacher": False},
    ),
    "symmetric_kl": (L.symmetric_kl, R.symmetric_kl, {"temperature": 0.7}),
    "mse": (L.mse_consistency, R.mse_consistency, {"temperature": 1.5}),
    "mse_both": (L.mse_consistency, R.mse_consistency, {"detach_teacher": False}),
}

SHAPES = [(1, 5), (7, 13), (6, 1), (37, 100), (19, 129), (2, 32000), (2, 5, 3, 4)]


def run(fn, inputs, reduction, **kw):
    """Loss and the gradients of every input, with a random upstream gradient."""
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*xs, reduction=reduction, **kw)
    g = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device).view(out.shape)
    (out * g).sum().backward()
    return out, [x.grad for x in xs]


def compare(fused, ref, inputs, reduction, dtype, what, **kw):
    (atol, rtol), (gatol, grtol) = TOL[dtype]
    out, grads = run(fused, inputs, reduction, **kw)
    ref_in = [x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in inputs]
    r_out, r_grads = run(ref, ref_in, reduction, **kw)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == expected_dtype, f"{what}: loss dtype {out.dtype}"
    assert_close(out, r_out, atol, rtol, f"{what} loss")
    for i, (g, rg) in enumerate(zip(grads, r_grads)):
        if rg is None:
            assert g is None or not g.abs().any(), f"{what}: input {i} got a gradient"
            continue
        assert g is not None, f"{what}: input {i} got no gradient"
        assert g.dtype == inputs[i].dtype and g.shape == inputs[i].shape
        assert_close(g, rg, gatol, grtol, f"{what} grad {i}")


class TestAgainstReference:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("name", list(PAIRS))
    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    def test_pairs(self, device, dtype, reduction, name, shape):
        if shape[1] == 32000 and (dtype != torch.float32 or reduction != "batchmean"):
            pytest.skip("the large shape runs once, in float32")
        fused, ref, kw = PAIRS[name]
        a, b = logits(shape, device, dtype, 1), logits(shape, device, dtype, 2)
        compare(fused, ref, [a, b], reduction, dtype, f"{name} {shape}", **kw)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mask", ["bool", "float"])
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("name", list(PAIRS))
    @pytest.mark.parametrize("shape", [(9, 11), (2, 6, 4, 3)], ids=str)
    def test_masks(self, device, mask, reduction, name, shape):
        fused, ref, kw = PAIRS[name]
        a, b = logits(shape, device, torch.float64, 3), logits(shape, device, torch.float64, 4)
        m = make_mask(mask, shape, device)
        compare(fused, ref, [a, b], reduction, torch.float64, f"{name} mask", mask=m, **kw)

    @pytest.mark.parametrize("device", DEVICES)
    def test_per_sample_mask_of_dense_logits(self, device):
        a, b = (
            logits((3, 4, 5, 2), device, torch.float64, 1),
            logits((3, 4, 5, 2), device, torch.float64, 2),
        )
        m = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64, device=device)
        full = m.view(3, 1, 1).expand(3, 5, 2)
        assert_close(
            L.kl_consistency(a, b, mask=m, reduction="none"),
            R.kl_consistency(a, b, mask=full, reduction="none"),
            1e-12,
            1e-10,
            "mask (N,) of dense logits",
        )

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("views", [2, 3, 5])
    @pytest.mark.parametrize("shape", [(1, 5), (7, 13), (6, 1), (2, 5, 3, 4)], ids=str)
    def test_js(self, device, dtype, reduction, views, shape):
        xs = [logits(shape, device, dtype, k) for k in range(views)]
        compare(L.js_consistency, R.js_consistency, xs, reduction, dtype, f"js {views}")

    @pytest.mark.parametrize("device", DEVICES)
    def test_js_large_and_weighted(self, device):
        xs = [logits((2, 32000), device, torch.float32, k) for k in range(3)]
        compare(L.js_consistency, R.js_consistency, xs, "batchmean", torch.float32, "js C=32000")
        xs = [logits((5, 9), device, torch.float64, k) for k in range(3)]
        w = [0.5, 0.2, 0.3]
        compare(
            L.js_consistency, R.js_consistency, xs, "sum", torch.float64, "js weights", weights=w
        )
        # Weights are normalised.
        assert_close(
            L.js_consistency(*xs, weights=[5, 2, 3]),
            L.js_consistency(*xs, weights=w),
            1e-12,
            1e-12,
            "weights normalised",
        )

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("normalize", ["all", "kept"])
    @pytest.mark.parametrize(
        "shape", [(1, 5), (40, 13), (30, 1), (2, 32000), (4, 5, 3, 4)], ids=str
    )
    def test_fixmatch(self, device, dtype, normalize, shape):
        weak = logits(shape, device, dtype, 1, scale=4.0)
        strong = logits(shape, device, dtype, 2)
        (atol, rtol), (gatol, grtol) = TOL[dtype]
        s = strong.detach().clone().requires_grad_()
        loss, kept = L.fixmatch_loss(weak, s, threshold=0.6, normalize=normalize)
        (2.0 * loss).backward()
        s_ref = (
            strong.detach().float().clone()
            if dtype in (torch.float16, torch.bfloat16)
            else strong.detach().clone()
        )
        s_ref.requires_grad_()
        w_ref = weak.float() if dtype in (torch.float16, torch.bfloat16) else weak
        r_loss, r_kept = R.fixmatch_loss(w_ref, s_ref, threshold=0.6, normalize=normalize)
        (2.0 * r_loss).backward()
        assert loss.shape == () and kept.shape == ()
        assert_close(kept, r_kept, 1e-7, 1e-7, "kept fraction")
        assert_close(loss, r_loss, atol, rtol, "fixmatch loss")
        assert_close(s.grad, s_ref.grad, gatol, grtol, "fixmatch grad")


class TestGradcheck:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("name", list(PAIRS))
    def test_pairs(self, device, reduction, name):
        fused, _, kw = PAIRS[name]
        for shape in [(3, 5), (2, 3, 2, 2)]:
            a = logits(shape, device, torch.float64, 1).requires_grad_()
            b = logits(shape, device, torch.float64, 2)
            m = make_mask("float", shape, device)
            if name in ("kl", "mse"):  # the teacher is detached
                assert torch.autograd.gradcheck(
                    lambda a, b=b, m=m: fused(a, b, reduction=reduction, mask=m, **kw), (a,)
                )
                continue
            b.requires_grad_()
            assert torch.autograd.gradcheck(
                lambda a, b, m=m: fused(a, b, reduction=reduction, mask=m, **kw), (a, b)
            )

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_js(self, device, reduction):
        xs = [logits((3, 4, 2), device, torch.float64, k).requires_grad_() for k in range(3)]
        assert torch.autograd.gradcheck(
            lambda *xs: L.js_consistency(*xs, weights=[1, 2, 3], reduction=reduction), xs
        )

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("normalize", ["all", "kept"])
    def test_fixmatch(self, device, normalize):
        weak = logits((6, 4), device, torch.float64, 1, scale=4.0)
        strong = logits((6, 4), device, torch.float64, 2).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda s: L.fixmatch_loss(weak, s, threshold=0.6, normalize=normalize)[0], (strong,)
        )


def opcheck_samples(device):
    a = logits((4, 7), device, torch.float32, 1)
    b = logits((4, 7), device, torch.float32, 2)
    d = logits((2, 3, 2, 2), device, torch.float32, 3)
    e = logits((2, 3, 2, 2), device, torch.float32, 4)
    m = make_mask("bool", (4, 7), device)

    def g(x):
        return x.clone().requires_grad_()

    return {
        "kl_consistency": [
            (g(a), b, 1.0, 0.4, None, "batchmean", True, False),
            (g(a), g(b), 2.0, 1.0, m, "none", True, True),
            (g(d), e, 1.0, 1.0, None, "mean", True, False),
            (a, b, 1.0, 1.0, None, "sum", False, False),
        ],
        "symmetric_kl": [
            (g(a), g(b), 1.0, m.float(), "batchmean", True, True),
            (g(d), g(e), 1.0, None, "none", True, True),
        ],
        "mse_consistency": [
            (g(a), b, 1.0, None, "sum", True, False),
            (g(d), g(e), 2.0, None, "none", True, True),
        ],
        "js_consistency": [
            ([g(a), g(b), g(a * 2)], None, 1.0, "batchmean", True),
            ([g(d), g(e)], [0.3, 0.7], 1.0, "none", True),
        ],
        "fixmatch_loss": [
            (a * 3, g(b), 0.5, 1.0, "all", True),
            (d * 3, g(e), 0.5, 1.0, "kept", True),
        ],
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_opcheck(device, op):
    for args in opcheck_samples(device)[op]:
        torch.library.opcheck(getattr(torch.ops.invfast, op).default, args)


class TestSavedGradients:
    """Backward scales the saved gradients in place only where no one can see them."""

    @pytest.mark.parametrize("name", ["kl", "js", "fixmatch"])
    def test_outputs_kept_by_the_caller_stay_unscaled(self, name):
        a = logits((6, 9), "cpu", torch.float32, 1).requires_grad_()
        b = logits((6, 9), "cpu", torch.float32, 2)
        ops = torch.ops.invfast
        if name == "kl":
            loss, grad, _ = ops.kl_consistency(a, b, 1.0, 1.0, None, "sum", True, False)
        elif name == "js":
            loss, (grad, _) = ops.js_consistency([a, b.requires_grad_()], None, 1.0, "sum", True)
        else:
            loss, _, grad = ops.fixmatch_loss(b * 3, a, 0.0, 1.0, "all", True)
        kept = grad.clone()
        (3.0 * loss).backward()
        assert torch.equal(grad, kept)
        assert_close(a.grad, 3.0 * kept / (6 if name == "fixmatch" else 1), 1e-6, 1e-6, name)

    @pytest.mark.parametrize("name", ["kl_consistency", "mse_consistency", "symmetric_kl", "js"])
    def test_unit_upstream_gradient(self, name):
        # A loss that is backward()'s root hands its buffer on unscaled; the
        # gradients must match a weighted call, the reference, and stay
        # separate from call to call.
        a = logits((6, 9), "cpu", torch.float32, 1).requires_grad_()
        b = logits((6, 9), "cpu", torch.float32, 2).requires_grad_()
        kw = {"detach_teacher": False} if name.endswith("consistency") else {}

        def grads(lib, weight):
            x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
            f = lib.js_consistency if name == "js" else getattr(lib, name)
            loss = f(x, y, **kw)
            (loss if weight is None else weight * loss).backward()
            return x.grad, y.grad

        first, second = grads(L, None), grads(L, None)
        weighted, reference = grads(L, 0.5), grads(R, None)
        for g1, g2, gw, gr in zip(first, second, weighted, reference):
            assert g1.data_ptr() != g2.data_ptr()
            assert torch.equal(g1, g2)
            assert_close(gw, 0.5 * g1, 0, 0, f"{name} weighted")
            assert_close(g1, gr, 1e-6, 1e-6, f"{name} vs reference")

    @pytest.mark.parametrize("name", ["kl_consistency", "mse_consistency", "symmetric_kl", "js"])
    def test_second_derivative_raises(self, name):
        a = logits((4, 7), "cpu", torch.float32, 1).requires_grad_()
        b = logits((4, 7), "cpu", torch.float32, 2).requires_grad_()
        f = L.js_consistency if name == "js" else getattr(L, name)
        kw = {"detach_teacher": False} if name.endswith("consistency") else {}
        loss = f(a, b, **kw)
        # First order under create_graph still gives the gradient...
        (ga,) = torch.autograd.grad(loss, a, create_graph=True)
        r_loss = (R.js_consistency if name == "js" else getattr(R, name))(a, b, **kw)
        assert_close(ga, torch.autograd.grad(r_loss, a)[0], 1e-6, 1e-6, name)
        # ... and differentiating it again says so instead of returning zeros.
        with pytest.raises(RuntimeError, match="has no second derivative"):
            ga.square().sum().backward()
        (gb,) = torch.autograd.grad(f(a, b, **kw), b, create_graph=False)
        assert not gb.requires_grad

    @pytest.mark.parametrize("reduction", ["none", "sum"])
    def test_retained_graph(self, reduction):
        a = logits((5, 7), "cpu", torch.float32, 1).requires_grad_()
        b = logits((5, 7), "cpu", torch.float32, 2).requires_grad_()
        loss = L.symmetric_kl(a, b, reduction=reduction).sum()
        first = torch.autograd.grad(2.0 * loss, (a, b), retain_graph=True)
        second = torch.autograd.grad(2.0 * loss, (a, b))
        for g1, g2 in zip(first, second):
            assert torch.equal(g1, g2)
        loss = L.symmetric_kl(a, b, reduction=reduction).sum()
        (2.0 * loss).backward()
        for x, g in zip((a, b), first):
            assert_close(x.grad, g, 0, 0, "backward after grad")

    @pytest.mark.parametrize("weight", [None, 3.0])
    @pytest.mark.parametrize("name", ["kl", "js", "fixmatch"])
    def test_buffers_of_saved_tensor_hooks_are_not_handed_on(self, name, weight):
        # A pack hook that copies into buffers of its own (an activation pool)
        # and an unpack hook that hands them back: backward must neither
        # scale those buffers nor return them as gradients.
        a = logits((6, 9), "cpu", torch.float32, 1)
        b = logits((6, 9), "cpu", torch.float32, 2)
        pool, snapshots = [], []

        def pack(t):
            if t.shape != a.shape:
                return t
            pool.append(t.detach().clone())
            snapshots.append(t.detach().clone())
            return pool[-1]

        def run(lib, hooks):
            x = a.detach().requires_grad_()
            with torch.autograd.graph.saved_tensors_hooks(*hooks):
                if name == "kl":
                    loss = lib.kl_consistency(x, b)
                elif name == "js":
                    loss = lib.js_consistency(x, b)
                else:
                    loss = lib.fixmatch_loss(b * 3, x, threshold=0.0)[0]
            (grad,) = torch.autograd.grad(loss if weight is None else weight * loss, x)
            return grad

        expected = run(L, (lambda t: t, lambda t: t))
        grad = run(L, (pack, lambda t: t))
        assert pool and all(grad.data_ptr() != p.data_ptr() for p in pool)
        assert all(torch.equal(p, k) for p, k in zip(pool, snapshots))
        assert torch.equal(grad, expected)
        assert_close(grad, run(R, (lambda t: t, lambda t: t)), 1e-6, 1e-6, name)


class TestExtremes:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("name", list(PAIRS))
    def test_large_logits(self, device, name):
        fused, ref, kw = PAIRS[name]
        a = logits((5, 9), device, torch.float32, 1, scale=1e4)
        b = logits((5, 9), device, torch.float32, 2, scale=1e4)
        out, grads = run(fused, [a, b], "batchmean", **kw)
        # An float32 reference loses digits here (1e4 has an ulp of 1e-3); the
        # kernels are compared with float64 on the same inputs.
        r_out, r_grads = run(ref, [a.double(), b.double()], "batchmean", **kw)
        assert_close(out, r_out, 1e-3, 1e-5, f"{name} 1e4 loss")
        for g, rg in zip(grads, r_grads):
            assert (g is None) == (rg is None)
            if g is not None:
                assert_close(g, rg, 1e-5, 1e-4, f"{name} 1e4 grad")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("name", ["kl", "kl_both", "symmetric_kl", "mse", "js"])
    def test_identical_inputs_exactly_zero(self, device, dtype, name):
        x = logits((6, 37), device, dtype, 1)
        x[0, 3] = float("-inf")
        xs = [x.clone().requires_grad_() for _ in range(3 if name == "js" else 2)]
        if name == "js":
            loss = L.js_consistency(*xs, reduction="none")
        else:
            fused, _, kw = PAIRS[name]
            kw = {k: v for k, v in kw.items() if k != "teacher_temperature"}
            loss = fused(*xs, reduction="none", **kw)
        loss.sum().backward()
        assert torch.equal(loss, torch.zeros_like(loss)), loss
        for x in xs:
            if x.grad is not None:
                assert torch.equal(x.grad, torch.zeros_like(x.grad)), x.grad

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("name", list(PAIRS))
    def test_one_hot_and_masked_classes(self, device, name):
        fused, ref, kw = PAIRS[name]
        a = logits((4, 6), device, torch.float64, 1)
        b = torch.full((4, 6), -1e4, dtype=torch.float64, device=device)
        b[torch.arange(4), torch.tensor([0, 2, 5, 1])] = 30.0  # one-hot: exp underflows to 0
        a[:, 4] = float("-inf")  # a class masked in both
        b[:, 4] = float("-inf")
        out, grads = run(fused, [a, b], "sum", **kw)
        assert torch.isfinite(out).all()
        assert all(g is None or torch.isfinite(g).all() for g in grads)
        compare(fused, ref, [a, b], "sum", torch.float64, f"{name} one-hot", **kw)

    @pytest.mark.parametrize("device", DEVICES)
    def test_js_masked_class(self, device):
        xs = [logits((3, 6), device, torch.float64, k) for k in range(3)]
        for x in xs:
            x[:, 2] = float("-inf")
        out, grads = run(L.js_consistency, xs, "sum")
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        compare(L.js_consistency, R.js_consistency, xs, "sum", torch.float64, "js -inf")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("name", list(PAIRS))
    def test_all_rows_masked(self, device, reduction, name):
        fused, _, kw = PAIRS[name]
        a = logits((4, 6), device, torch.float32, 1)
        b = logits((4, 6), device, torch.float32, 2)
        a[1] = float("nan")  # a masked-out row may hold anything
        b[2] = float("-inf")
        out, grads = run(fused, [a, b], reduction, mask=torch.zeros(4, dtype=torch.bool), **kw)
        assert torch.equal(out, torch.zeros_like(out))
        assert all(g is None or torch.equal(g, torch.zeros_like(g)) for g in grads)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("name", list(PAIRS))
    def test_empty_batch(self, device, name):
        fused, _, kw = PAIRS[name]
        a = torch.empty(0, 5, device=device, requires_grad=True)
        b = torch.empty(0, 5, device=device, requires_grad=True)
        for reduction in REDUCTIONS:
            out = fused(a, b, reduction=reduction, **kw)
            assert not torch.isnan(out).any()
            out.sum().backward()

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_inputs_that_overflow_a_naive_softmax(self, device, dtype):
        a = logits((4, 50), device, torch.float32, 1, scale=3000.0).to(dtype)
        b = logits((4, 50), device, torch.float32, 2, scale=3000.0).to(dtype)
        naive = (b.exp() / b.exp().sum(1, keepdim=True)).float()
        assert not torch.isfinite(naive).all()  # the naive float16 softmax overflows
        for name in PAIRS:
            fused, ref, kw = PAIRS[name]
            out, grads = run(fused, [a, b], "batchmean", **kw)
            assert torch.isfinite(out).all() and all(
                g is None or torch.isfinite(g).all() for g in grads
            )
            assert_close(out, ref(a.float(), b.float(), **kw), 1e-3, 1e-3, name)


class TestNonFiniteLogits:
    """A NaN or an infinite logit makes its row NaN, as in PyTorch, wherever it sits.

    float32 runs the CPU kernels' polynomial exp, float64 the library one; 3 and 17
    classes take the lane-per-row form, 200 the row form, 40 and 100 either (by
    the instruction set); the bad logit sits in the first vector chunk of its row.
    """

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("classes", [3, 17, 40, 100, 200])
    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    @pytest.mark.parametrize("op", ["kl_consistency", "symmetric_kl", "mse_consistency", "js"])
    def test_row_with_a_bad_logit_is_nan(self, device, dtype, classes, bad, op):
        rows = 5
        xs = [logits((rows, classes), device, dtype, seed) for seed in (1, 2, 3)]
        xs[0][2, 0] = bad
        xs = [x.requires_grad_() for x in xs]
        if op == "js":
            loss = L.js_consistency(*xs, reduction="none")
        elif op == "symmetric_kl":
            loss = L.symmetric_kl(xs[0], xs[1], reduction="none")
        else:
            loss = getattr(L, op)(xs[0], xs[1], reduction="none", detach_teacher=False)
        used = xs if op == "js" else xs[:2]
        loss.sum().backward()
        assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3, 4]]).all()
        for x in used:
            assert torch.isnan(x.grad[2]).all(), "every gradient of the bad row is NaN"
            assert torch.isfinite(x.grad[[0, 1, 3, 4]]).all()

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("classes", [3, 17, 40])
    def test_fixmatch_never_keeps_a_weak_row_without_a_softmax(self, device, classes):
        # Even at threshold 0: the row's confidence is NaN, not 0.
        weak = logits((4, classes), device, torch.float32, 1)
        weak[0, 0] = float("nan")
        weak[1] = float("-inf")
        weak[2, 0] = float("inf")
        strong = logits((4, classes), device, torch.float32, 2)
        loss, kept = L.fixmatch_loss(weak, strong, threshold=0.0)
        r_loss, r_kept = R.fixmatch_loss(weak, strong, threshold=0.0)
        assert kept.item() == r_kept.item() == 1 / 4
        assert_close(loss, r_loss, 1e-5, 1e-4, "fixmatch loss")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("classes", [3, 40])
    def test_fixmatch_strong_infinity_is_nan(self, device, classes):
        weak = torch.zeros(1, classes, device=device)
        weak[0, 1] = 10.0
        strong = torch.zeros(1, classes, device=device)
        strong[0, 0] = float("inf")
        loss, kept = L.fixmatch_loss(weak, strong)
        assert kept.item() == 1.0 and torch.isnan(loss)


class TestMixtureUnderflow:
    """The JS mixture where one view's probability of a class is tiny and the others' 0."""

    @pytest.mark.parametrize("device", DEVICES)
    def test_subnormal_probability_in_one_view(self, device):
        a = torch.tensor([[0.0, -100.4, 2.0]], device=device)
        b = torch.tensor([[0.0, float("-inf"), 0.0]], device=device)
        fused = L.js_consistency(a, b, b)
        assert torch.isfinite(fused)
        assert_close(fused, R.js_consistency(a, b, b), 1e-6, 1e-4, "JS")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype, w0", [(torch.float32, 1e-9), (torch.float64, 1e-17)])
    def test_tiny_weight(self, device, dtype, w0):
        a = torch.tensor([[0.0, -5.0]], device=device, dtype=dtype, requires_grad=True)
        b = torch.tensor([[0.0, float("-inf")]], device=device, dtype=dtype)
        fused = L.js_consistency(a, b, weights=[w0, 1.0])
        ref = R.js_consistency(a.detach(), b, weights=[w0, 1.0])
        assert_close(fused, ref, 0.0, 1e-3, "JS")
        fused.backward()
        assert torch.isfinite(a.grad).all()


class TestProperties:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("seed", range(4))
    def test_non_negative_symmetric_shift_invariant(self, device, seed):
        a = logits((16, 9), device, torch.float32, 2 * seed)
        b = logits((16, 9), device, torch.float32, 2 * seed + 1)
        c = logits((16, 9), device, torch.float32, 99)
        shift = 100 * torch.randn(16, 1, device=device)
        for fn in (L.kl_consistency, L.symmetric_kl, L.mse_consistency):
            rows = fn(a, b, reduction="none")
            assert (rows >= 0).all()
            assert_close(fn(a + shift, b - shift, reduction="none"), rows, 1e-4, 1e-3, "shift")
        assert (L.js_consistency(a, b, c, reduction="none") >= 0).all()
        assert_close(L.symmetric_kl(a, b), L.symmetric_kl(b, a), 1e-7, 1e-6, "symmetric")
        assert_close(L.mse_consistency(a, b), L.mse_consistency(b, a), 1e-7, 1e-6, "mse")
        assert_close(L.js_consistency(a, b), L.js_consistency(b, a), 1e-6, 1e-5, "js")
        assert_close(L.js_consistency(a, b, c), L.js_consistency(c, a, b), 1e-6, 1e-5, "js 3")

    @pytest.mark.parametrize("device", DEVICES)
    def test_reductions_agree(self, device):
        a = logits((4, 7, 3), device, torch.float64, 1)
        b = logits((4, 7, 3), device, torch.float64, 2)
        rows = L.kl_consistency(a, b, reduction="none")
        assert rows.shape == (4, 3)
        assert_close(L.kl_consistency(a, b, reduction="sum"), rows.sum(), 1e-12, 1e-12, "sum")
        assert_close(L.kl_consistency(a, b), rows.sum() / 4, 1e-12, 1e-12, "batchmean")
        assert_close(L.kl_consistency(a, b, reduction="mean"), rows.mean(), 1e-12, 1e-12, "mean")

    @pytest.mark.parametrize("device", DEVICES)
    def test_kl_matches_torch_kl_div(self, device):
        s = logits((8, 10), device, torch.float32, 1)
        t = logits((8, 10), device, torch.float32, 2)
        expected = torch.nn.functional.kl_div(
            torch.log_softmax(s, 1), torch.softmax(t / 0.4, 1), reduction="batchmean"
        )
        assert_close(
            L.kl_consistency(s, t, teacher_temperature=0.4), expected, 1e-6, 1e-5, "kl_div"
        )


class TestFixMatch:
    @pytest.mark.parametrize("device", DEVICES)
    def test_normalize_modes(self, device):
        weak = torch.tensor([[10.0, 0, 0], [0, 0, 0], [0, 0, 10.0], [0, 0, 0]], device=device)
        strong = logits((4, 3), device, torch.float32, 5)
        ce = torch.nn.functional.cross_entropy(strong, torch.tensor([0, 0, 2, 0]), reduction="none")
        loss, kept = L.fixmatch_loss(weak, strong, threshold=0.9, normalize="all")
        assert_close(kept, torch.tensor(0.5), 0, 1e-7, "kept")
        assert_close(loss, (ce[0] + ce[2]) / 4, 1e-6, 1e-6, "all")
        loss, _ = L.fixmatch_loss(weak, strong, threshold=0.9, normalize="kept")
        assert_close(loss, (ce[0] + ce[2]) / 2, 1e-6, 1e-6, "kept")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("normalize", ["all", "kept"])
    def test_none_kept(self, device, normalize):
        weak = torch.zeros(5, 4, device=device)
        strong = logits((5, 4), device, torch.float32, 1).requires_grad_()
        loss, kept = L.fixmatch_loss(weak, strong, threshold=0.9, normalize=normalize)
        loss.backward()
        assert isinstance(loss, torch.Tensor) and isinstance(kept, torch.Tensor)
        assert loss.item() == 0.0 and kept.item() == 0.0
        assert torch.equal(strong.grad, torch.zeros_like(strong.grad))

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("classes", [3, 40])
    def test_rows_without_a_finite_weak_logit_are_never_kept(self, device, classes):
        # An all -inf row, a NaN among -inf logits, a NaN among finite ones; then a
        # confident row and one just above the threshold (rows shorter and longer
        # than a CUDA warp).
        weak = torch.full((5, classes), float("-inf"), dtype=torch.float64, device=device)
        weak[1, 1] = float("nan")
        weak[2] = 0.0
        weak[2, 0] = float("nan")
        weak[3] = 0.0
        weak[3, 2] = 20.0
        weak[4] = logits((classes,), device, torch.float64, 3)
        strong = logits((5, classes), device, torch.float64, 4).requires_grad_()
        threshold = 0.999 * float(weak[4].softmax(0).max())
        loss, kept = L.fixmatch_loss(weak, strong, threshold=threshold)
        r_loss, r_kept = R.fixmatch_loss(weak, strong.detach(), threshold=threshold)
        assert kept.item() == r_kept.item() == 2 / 5
        assert_close(loss, r_loss, 1e-12, 1e-9, "fixmatch loss")
        loss.backward()
        assert torch.isfinite(strong.grad).all()
        assert torch.equal(strong.grad[:3], torch.zeros_like(strong.grad[:3]))

    @pytest.mark.parametrize("device", DEVICES)
    def test_weak_is_detached_and_temperature_sharpens(self, device):
        weak = logits((20, 5), device, torch.float32, 1).requires_grad_()
        strong = logits((20, 5), device, torch.float32, 2).requires_grad_()
        loss, kept = L.fixmatch_loss(weak, strong, threshold=0.7)
        sharp_loss, sharp_kept = L.fixmatch_loss(weak, strong, threshold=0.7, temperature=0.5)
        assert sharp_kept >= kept
        sharp_loss.backward()
        assert weak.grad is None

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
    def test_no_host_sync_on_cuda(self):
        weak = logits((64, 10), "cuda", torch.float32, 1)
        strong = logits((64, 10), "cuda", torch.float32, 2).requires_grad_()
        L.fixmatch_loss(weak, strong)  # warm up
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss, _ = L.fixmatch_loss(weak, strong, normalize="kept")
            loss.backward()
            L.kl_consistency(strong, weak, mask=weak[:, 0] > 0).backward()
            L.js_consistency(strong, weak, weak).backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)


class TestErrors:
    def test_errors_name_the_argument(self):
        a, b = torch.randn(4, 5), torch.randn(4, 5)
        with pytest.raises(ValueError, match=r"teacher must have the shape of student \(4, 5\)"):
            L.kl_consistency(a, torch.randn(4, 6))
        with pytest.raises(TypeError, match="teacher must have the dtype of student"):
            L.kl_consistency(a, b.double())
        with pytest.raises(ValueError, match="student must be logits"):
            L.kl_consistency(torch.randn(4), torch.randn(4))
        with pytest.raises(TypeError, match="a must be float32"):
            L.symmetric_kl(a.long(), b.long())
        with pytest.raises(ValueError, match="reduction must be one of .*'elementwise'"):
            L.mse_consistency(a, b, reduction="elementwise")
        with pytest.raises(ValueError, match=r"mask must have shape \(4,\), got \(5,\)"):
            L.kl_consistency(a, b, mask=torch.ones(5))
        with pytest.raises(ValueError, match="teacher_temperature must be a positive number"):
            L.kl_consistency(a, b, teacher_temperature=0.0)
        with pytest.raises(ValueError, match="at least 2 views"):
            L.js_consistency(a)
        with pytest.raises(ValueError, match="weights must have one value per view"):
            L.js_consistency(a, b, weights=[1.0])
        with pytest.raises(ValueError, match=r"logits\[1\] must have the shape"):
            L.js_consistency(a, torch.randn(3, 5))
        with pytest.raises(ValueError, match="threshold must be in"):
            L.fixmatch_loss(a, b, threshold=1.5)
        with pytest.raises(ValueError, match="normalize must be one of"):
            L.fixmatch_loss(a, b, normalize="some")

    def test_cpp_checks(self):
        a, b = torch.randn(4, 5), torch.randn(4, 5)
        with pytest.raises(RuntimeError, match="kl_consistency: reduction must be"):
            torch.ops.invfast.kl_consistency(a, b, 1.0, 1.0, None, "avg", False, False)
        with pytest.raises(RuntimeError, match=r"symmetric_kl: b must have the shape of a"):
            torch.ops.invfast.symmetric_kl(a, b[:2], 1.0, None, "sum", False, False)
        with pytest.raises(RuntimeError, match="js_consistency: logits must be 2 to 16 views"):
            torch.ops.invfast.js_consistency([a], None, 1.0, "sum", False)
        with pytest.raises(RuntimeError, match="fixmatch_loss: normalize must be"):
            torch.ops.invfast.fixmatch_loss(a, b, 0.5, 1.0, "x", False)

    def test_missing_grad_flag(self):
        a = torch.randn(4, 5, requires_grad=True)
        loss, _, _ = torch.ops.invfast.kl_consistency(
            a, a.detach(), 1, 1, None, "sum", False, False
        )
        with pytest.raises(RuntimeError, match="grad_student=False"):
            loss.backward()


class TestIntegration:
    def test_modules(self):
        s, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10)
        assert_close(
            invfast.nn.KLConsistency(teacher_temperature=0.4)(s, t),
            L.kl_consistency(s, t, teacher_temperature=0.4),
            0,
            0,
            "module",
        )
        invfast.nn.SymmetricKL(reduction="sum")(s, t).backward()
        assert invfast.nn.JSConsistency(weights=[1, 1, 2])(s, t, t).shape == ()
        assert invfast.nn.MSEConsistency()(s, s).item() == 0.0
        loss, kept = invfast.nn.FixMatchLoss(threshold=0.5)(t * 10, s)
        assert loss.shape == () and kept.shape == ()
        assert "teacher_temperature=0.4" in repr(invfast.nn.KLConsistency(teacher_temperature=0.4))

    def test_torch_compile(self):
        s, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10)

        @torch.compile(backend="aot_eager")
        def step(s, t):
            return L.kl_consistency(s, t, teacher_temperature=0.4) + L.fixmatch_loss(t, s)[0]

        step(s, t).backward()
        expected = s.grad.clone()
        s.grad = None
        (L.kl_consistency(s, t, teacher_temperature=0.4) + L.fixmatch_loss(t, s)[0]).backward()
        assert_close(expected, s.grad, 1e-6, 1e-5, "compiled")

    def test_ops_trace_without_graph_breaks(self):
        xs = [torch.randn(8, 10, requires_grad=True) for _ in range(3)]

        @torch.compile(fullgraph=True, backend="aot_eager")
        def step(a, b, c):
            ops = torch.ops.invfast
            kl = ops.kl_consistency(a, b, 1.0, 0.4, None, "batchmean", True, True)[0]
            js = ops.js_consistency([a, b, c], None, 1.0, "none", True)[0].sum()
            fm = ops.fixmatch_loss(c.detach(), a, 0.5, 1.0, "kept", True)[0]
            return kl + js + fm

        step(*xs).backward()
        assert all(torch.isfinite(x.grad).all() for x in xs)

    def test_reference_backend(self):
        s, t = torch.randn(8, 10), torch.randn(8, 10)
        fused = L.js_consistency(s, t, s + t)
        _ops.set_backend("reference")
        try:
            ref = L.js_consistency(s, t, s + t)
        finally:
            _ops.set_backend("auto")
        assert_close(fused, ref, 1e-6, 1e-5, "reference backend")

    def test_many_views_fall_back(self):
        xs = [torch.randn(3, 4) for _ in range(17)]
        with pytest.warns(RuntimeWarning, match="at most 16 views"):
            out = L.js_consistency(*xs)
        assert_close(out, R.js_consistency(*xs), 1e-6, 1e-5, "17 views")

    def test_cuda_kernels_registered_when_built_for_cuda(self):
        if invfast.backend_info()["built_for_cuda"] in (None, "none"):
            pytest.skip("built without nvcc")
        for op in OPS:
            assert _ops.has_kernel(op, "cuda"), op

    @pytest.mark.parametrize("capability", ["default", "avx2", None])
    def test_each_cpu_kernel_build(self, capability):
        # Every instruction-set build of the row kernels against the reference.
        # ATEN_CPU_CAPABILITY caps the choice as it caps ATen's own kernels:
        # "default" selects the portable build; unset, the widest the CPU runs.
        code = (
            "import torch, invfast\n"
            "from invfast import losses as L\n"
            "from invfast.reference import losses as R\n"
            "a, b, c = (torch.randn(33, 1001, dtype=d) for d in [torch.float32] * 3)\n"
            "for f, g in [(L.kl_consistency, R.kl_consistency), (L.symmetric_kl, R.symmetric_kl),"
            " (L.mse_consistency, R.mse_consistency)]:\n"
            "    torch.testing.assert_close(f(a, b), g(a, b), atol=1e-5, rtol=1e-4)\n"
            "torch.testing.assert_close(L.js_consistency(a, b, c), R.js_consistency(a, b, c),"
            " atol=1e-5, rtol=1e-4)\n"
            "s, t = torch.randn(2, 7, 37, dtype=torch.float64).unbind(0)\n"
            "s.requires_grad_()\n"
            "assert torch.autograd.gradcheck(lambda x: L.js_consistency(x, t), (s,))\n"
            "print(invfast.backend_info()['cpu_loss_kernels'])\n"
        )
        # The rest of the environment stays: it says which build to import
        # (PYTHONPATH) and what to preload (the sanitizer runs).
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if capability is not None:
            env["ATEN_CPU_CAPABILITY"] = capability
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        chosen = res.stdout.split()[-1]
        if capability == "default":
            assert chosen == "generic"
        elif capability == "avx2":
            assert chosen in ("avx2", "generic")
        elif platform.machine() == "x86_64" and "ATEN_CPU_CAPABILITY" not in os.environ:
            # ATen's choice on this CPU (with the variable unset); invfast's
            # x86-64 builds carry the same instruction sets.
            aten = torch.backends.cpu.get_cpu_capability().lower()
            assert chosen == (aten if aten in ("avx2", "avx512") else "generic")
