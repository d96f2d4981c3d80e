"""Consistency losses, forward + backward, fused against plain PyTorch."""

from __future__ import annotations

import torch

from .. import losses
from ..reference import losses as ref
from .runner import Case, Provider

SHAPES = [(256, 1000), (4096, 100), (64, 32000), (16384, 10)]
QUICK_SHAPES = [(64, 10)]

# name -> (number of inputs, which need grad, call(lib, *inputs) -> scalar loss)
LOSSES = {
    "kl_consistency (UDA, T_t=0.4)": (
        2,
        (True, False),
        lambda lib, s, t: lib.kl_consistency(s, t, teacher_temperature=0.4),
    ),
    "mse_consistency": (2, (True, False), lambda lib, s, t: lib.mse_consistency(s, t)),
    "symmetric_kl (R-Drop)": (2, (True, True), lambda lib, a, b: lib.symmetric_kl(a, b)),
    "js_consistency, 3 views (AugMix)": (
        3,
        (True, True, True),
        lambda lib, *v: lib.js_consistency(*v),
    ),
    "fixmatch_loss": (
        2,
        (False, True),
        lambda lib, w, s: lib.fixmatch_loss(w, s, threshold=0.5)[0],
    ),
}


def step(lib, call, inputs):
    """One forward + backward, gradients dropped."""

    def run():
        for x in inputs:
            x.grad = None
        call(lib, *inputs).backward()

    return run


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    for N, C in QUICK_SHAPES if quick else SHAPES:
        for name, (k, grads, call) in LOSSES.items():
            g = torch.Generator().manual_seed(0)
            inputs = [
                (3 * torch.randn(N, C, generator=g)).to(device).requires_grad_(need)
                for need in grads
            ][:k]
            providers = [
                Provider("invfast (fused)", step(losses, call, inputs)),
                Provider("eager PyTorch (reference)", step(ref, call, inputs)),
            ]
            if not quick:
                compiled = torch.compile(lambda *v, c=call: c(ref, *v), dynamic=False)
                providers.append(
                    Provider(
                        "torch.compile(reference)",
                        step(None, lambda _, *v, f=compiled: f(*v), inputs),
                    )
                )
            # At the least: read every input, write every gradient.
            nbytes = (len(inputs) + sum(grads)) * N * C * 4
            out.append(
                Case(
                    "losses",
                    f"{name}, ({N}, {C}) fp32 fwd+bwd",
                    N,
                    "rows",
                    nbytes,
                    providers,
                    device,
                )
            )
    return out
