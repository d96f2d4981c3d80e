"""torch.compile and autocast over a training step built from invfast's ops.

The step draws random views with RandomAffine, warps again from the matrices
with affine_warp, runs a model and adds a KL consistency term. It must trace
as one graph (fullgraph=True, no graph break) and give the eager result.
"""

import time

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from torch import nn

import invfast
from invfast import _ops

try:
    from invfast import losses
except ImportError:  # an invfast without the fused losses: the warp alone is checked
    losses = None


def kl_consistency(student, teacher, **kwargs):
    if losses is not None:
        return losses.kl_consistency(student, teacher, **kwargs)
    log_p = torch.log_softmax(teacher.detach().float() / kwargs.get("teacher_temperature", 1), 1)
    return F.kl_div(torch.log_softmax(student.float(), 1), log_p, "batchmean", log_target=True)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def make_step(model):
    aug = invfast.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10)

    def step(images, labels):
        views, matrices = aug(images, return_matrices=True)
        again = invfast.affine_warp(images, matrices, padding_mode="reflection")
        logits = model(torch.cat([images, views, again]))
        clean, view, other = logits.chunk(3)
        kl = kl_consistency(view, clean, teacher_temperature=0.5)
        return F.cross_entropy(view, labels) + kl + 0.1 * F.mse_loss(other, view), views

    return step


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 5, (6,), generator=g)


def run(step, model, images, labels, seed=123):
    """Loss, views and parameter gradients of one step from a fixed RNG state."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, views = step(images, labels)
    loss.backward()
    return loss.detach(), views.detach(), [p.grad.clone() for p in model.parameters()]


def assert_same_step(eager, compiled, atol=1e-5, rtol=1e-5):
    for what, a, b in zip(("loss", "views"), eager[:2], compiled[:2]):
        assert_close(b, a, atol, rtol, what)
    for i, (a, b) in enumerate(zip(eager[2], compiled[2])):
        assert_close(b, a, atol, rtol, f"grad {i}")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_step_traces_without_graph_breaks(backend):
    model = make_model()
    images, labels = batch()
    _ops.set_backend(backend)
    try:
        explanation = torch._dynamo.explain(make_step(model))(images, labels)
    finally:
        _ops.set_backend("auto")
    reasons = [r.reason for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_matches_eager(backend):
    model = make_model()
    images, labels = batch()
    step = make_step(model)
    eager = run(step, model, images, labels)
    compiled = run(torch.compile(step, backend=backend, fullgraph=True), model, images, labels)
    assert_same_step(eager, compiled)
    # A second call with other data reuses the graph and still agrees.
    images2 = torch.rand_like(images)
    eager = run(step, model, images2, labels, seed=7)
    compiled = run(torch.compile(step, backend=backend, fullgraph=True), model, images2, labels, 7)
    assert_same_step(eager, compiled)


@pytest.mark.slow
def test_compiled_step_matches_eager_with_inductor():
    # Inductor draws its own random numbers unless told to call the eager RNG.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        _inductor_step()


def _inductor_step():
    model = make_model()
    images, labels = batch()
    step = make_step(model)
    eager = run(step, model, images, labels)
    start = time.perf_counter()
    compiled = run(torch.compile(step, fullgraph=True), model, images, labels)
    assert_same_step(eager, compiled, atol=1e-4, rtol=1e-4)
    # Compiling on 2 cores takes ~20-40 s; fail loudly if it becomes a CI burden.
    assert time.perf_counter() - start < 240


# Autocast: the warp is not an autocast op, so it keeps the dtype of its input
# (fp32 images stay fp32, bf16 images stay bf16); the losses take the model's
# low-precision logits and compute and return fp32.


@pytest.mark.skipif(losses is None, reason="invfast.losses is not in this tree")
def test_autocast_bf16_eager():
    model = make_model()
    images, labels = batch()
    step = make_step(model)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, views = step(images, labels)
        bf16_views = invfast.RandomAffine(degrees=20)(images.bfloat16())
        logits = model(images)
        kl = losses.kl_consistency(logits, logits.flip(0))
    assert views.dtype == torch.float32
    assert bf16_views.dtype == torch.bfloat16
    assert logits.dtype == torch.bfloat16
    assert kl.dtype == torch.float32 and loss.dtype == torch.float32
    expected = invfast.reference.losses.kl_consistency(logits.float(), logits.flip(0).float())
    assert_close(kl, expected, 1e-5, 1e-5, "kl of bf16 logits")
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_autocast_bf16_compiled_matches_eager():
    model = make_model()
    images, labels = batch()
    step = make_step(model)

    def amp_step(images, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step(images, labels)

    eager = run(amp_step, model, images, labels)
    compiled = run(
        torch.compile(amp_step, backend="aot_eager", fullgraph=True), model, images, labels
    )
    assert_same_step(eager, compiled, atol=1e-2, rtol=1e-2)


# The counter-seeded sampler: its ops trace into the graph with the key as a
# constant (an int step) or as a graph input (a tensor step).


def seeded_views(images, step):
    aug = invfast.RandomAffine(
        degrees=30, angles=(0, 180), translate=(0.1, 0.1), shear=(-5, 5, -5, 5), p=0.8, seed=3
    )
    crop = invfast.RandomAffine(crop_scale=(0.3, 1.0), size=(12, 10), vflip=0.5, seed=4)
    views, matrices = aug(images, return_matrices=True, step=step)
    return views, matrices, crop.sample_matrices(images, step=step)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("tensor_step", [False, True])
def test_seeded_sampler_traces_and_matches_eager(backend, tensor_step):
    images, _ = batch()
    step = torch.tensor(7) if tensor_step else 7
    _ops.set_backend(backend)
    try:
        explanation = torch._dynamo.explain(seeded_views)(images, step)
        compiled = torch.compile(seeded_views, backend="aot_eager", fullgraph=True)(images, step)
        eager = seeded_views(images, step)
    finally:
        _ops.set_backend("auto")
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    for what, a, b in zip(("views", "matrices", "crop matrices"), eager, compiled):
        assert torch.equal(a, b), what
