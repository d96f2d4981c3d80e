"""The fused affine warp against its reference, kornia, grid_sample and hand-worked cases."""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, TOLERANCES, assert_close

import invfast
from invfast import _ops, geometry, reference

MODES = ["bilinear", "nearest", "bicubic"]
PADDINGS = ["zeros", "border", "reflection", "fill"]

needs_kernels = pytest.mark.skipif(
    not _ops.has_kernel("affine_warp", "cpu"), reason="compiled kernels not loaded"
)


def random_matrices(B, H, W, seed=0, strength=1.0, dtype=torch.float32):
    """Rotations, zooms, shears, shifts and flips that move pixels well outside the image."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, 7, generator=g, dtype=torch.float64)
    m = geometry.affine_matrices(
        H,
        W,
        angle=(u[:, 0] * 360 - 180) * strength,
        translate=torch.stack([(u[:, 1] - 0.5) * W, (u[:, 2] - 0.5) * H], -1) * strength,
        scale=0.6 + u[:, 3] * 0.9,
        shear=(u[:, 4:6] - 0.5) * 40 * strength,
        hflip=u[:, 6] < 0.5,
    )
    return m.to(dtype)


def images_like(B, C, H, W, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, W, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def warp_reference_fp64(x, m, **kw):
    return reference.affine_warp(x.double(), m.double(), **kw)


@needs_kernels
class TestAgainstReference:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    @pytest.mark.parametrize("align_corners", [False, True])
    @pytest.mark.parametrize(
        "B,C,H,W,size",
        [
            (1, 1, 8, 8, None),
            (3, 3, 17, 24, None),
            (2, 4, 15, 9, (21, 12)),
            (5, 2, 1, 7, (3, 4)),
            # Rows long enough for the vector paths, with partial last vectors.
            (4, 3, 40, 53, (37, 45)),
        ],
    )
    def test_fp32(self, device, mode, padding_mode, align_corners, B, C, H, W, size):
        x = images_like(B, C, H, W, device=device)
        m = random_matrices(B, H, W, seed=B * H).to(device)
        kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners, size=size)
        got = invfast.affine_warp(x, m, fill=0.25, **kw)
        expected = warp_reference_fp64(x, m, fill=0.25, **kw)
        assert got.dtype == x.dtype and got.device == x.device
        if mode == "nearest":
            # A position within rounding of a tie between two pixels may go either way.
            differ = (got.double() - expected).abs() > 1e-5
            assert differ.float().mean() < 0.002, f"{int(differ.sum())} nearest pixels differ"
        else:
            assert_close(got, expected, 1e-5, 1e-5, "affine_warp vs reference")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
    def test_other_float_dtypes(self, device, dtype):
        x = images_like(2, 3, 13, 16, dtype=dtype, device=device)
        m = random_matrices(2, 13, 16, seed=3).to(device)
        got = invfast.affine_warp(x, m, padding_mode="reflection")
        expected = warp_reference_fp64(x, m, padding_mode="reflection")
        assert got.dtype == dtype
        assert_close(got, expected, *TOLERANCES[dtype], f"affine_warp {dtype}")

    @pytest.mark.parametrize("device", DEVICES)
    def test_channels_last_and_strided_inputs(self, device):
        x = images_like(3, 4, 12, 18, device=device)
        m = random_matrices(3, 12, 18, seed=5).to(device)
        expected = invfast.affine_warp(x, m)
        cl = x.contiguous(memory_format=torch.channels_last)
        got = invfast.affine_warp(cl, m)
        assert got.is_contiguous(memory_format=torch.channels_last)
        # The vector path (unit-stride rows) and the scalar path round apart.
        assert_close(got, expected, 1e-6, 1e-6, "channels_last")
        big = images_like(3, 8, 24, 36, device=device)
        view = big[:, ::2, ::2, ::2]
        assert_close(
            invfast.affine_warp(view, m), invfast.affine_warp(view.contiguous(), m), 0, 0, "view"
        )
        m33 = torch.cat([m, torch.tensor([0.0, 0.0, 1.0], device=device).expand(3, 1, 3)], 1)
        assert torch.equal(invfast.affine_warp(x, m33), expected)


@needs_kernels
class TestAgainstPeers:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection", "fill"])
    @pytest.mark.parametrize("size", [None, (19, 13)])
    def test_kornia_warp_affine(self, mode, padding_mode, size):
        kornia = pytest.importorskip("kornia")
        x = images_like(4, 3, 16, 21)
        m = random_matrices(4, 16, 21, seed=11)
        dsize = (16, 21) if size is None else size
        fill = torch.tensor([0.3, 0.3, 0.3])
        # kornia normalises pixel coordinates with align_corners=True semantics;
        # with that flag its warp follows the same pixel-centre convention.
        expected = kornia.geometry.transform.warp_affine(
            x, m, dsize, mode=mode, padding_mode=padding_mode, align_corners=True, fill_value=fill
        )
        got = invfast.affine_warp(
            x, m, mode=mode, padding_mode=padding_mode, align_corners=True, fill=0.3, size=dsize
        )
        if mode == "nearest":
            assert ((got - expected).abs() > 1e-5).float().mean() < 0.002
        else:
            assert_close(got, expected, 1e-5, 1e-5, "affine_warp vs kornia")

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
    @pytest.mark.parametrize("align_corners", [False, True])
    def test_affine_grid_grid_sample(self, mode, padding_mode, align_corners):
        """A transform given in grid_sample's normalised space, turned into pixels by hand."""
        B, C, H, W, Ho, Wo = 3, 2, 14, 19, 17, 11
        x = images_like(B, C, H, W)
        g = torch.Generator().manual_seed(2)
        theta = torch.eye(2, 3).expand(B, 2, 3) + 0.4 * torch.randn(B, 2, 3, generator=g)
        grid = F.affine_grid(theta, [B, C, Ho, Wo], align_corners=align_corners)
        expected = F.grid_sample(
            x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners
        )

        def to_norm(S):  # pixel p -> normalised n, as a 3x3 acting on (x, y, 1)
            if align_corners:
                return (2.0 / (S - 1), -1.0)
            return (2.0 / S, 1.0 / S - 1.0)

        def norm_matrix(Sw, Sh):
            (a, b), (c, d) = to_norm(Sw), to_norm(Sh)
            return torch.tensor([[a, 0, b], [0, c, d], [0, 0, 1.0]], dtype=torch.float64)

        theta3 = geometry.as_3x3(theta.double())
        inverse = torch.linalg.inv(norm_matrix(W, H)) @ theta3 @ norm_matrix(Wo, Ho)
        m = torch.linalg.inv(inverse)[:, :2].float()
        kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
        got = invfast.affine_warp(x, m, size=(Ho, Wo), **kw)
        if mode == "nearest":
            assert ((got - expected).abs() > 1e-5).float().mean() < 0.002
        else:
            assert_close(got, expected, 1e-5, 1e-5, "affine_warp vs affine_grid + grid_sample")


@needs_kernels
class TestExactCases:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_identity(self, device, mode, padding_mode):
        x = images_like(2, 3, 9, 10, device=device)
        m = torch.eye(2, 3, device=device).expand(2, 2, 3)
        assert torch.equal(invfast.affine_warp(x, m, mode=mode, padding_mode=padding_mode), x)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", MODES)
    def test_quarter_turn_moves_a_bright_pixel(self, device, mode):
        x = torch.zeros(1, 1, 7, 7, device=device)
        x[0, 0, 1, 5] = 1.0  # row 1, column 5: near the top right
        m = geometry.affine_matrices(
            7,
            7,
            angle=torch.tensor([90.0]),
            translate=torch.zeros(1, 2),
            scale=torch.ones(1),
            shear=torch.zeros(1, 2),
            hflip=torch.tensor([False]),
        ).to(device)
        y = invfast.affine_warp(x, m, mode=mode)
        # Counter-clockwise on screen: the top right corner goes to the top left,
        # (x, y) -> (y, 6 - x) about the centre (3, 3).
        expected = torch.zeros_like(x)
        expected[0, 0, 1, 1] = 1.0
        assert_close(y, expected, 1e-6, 0, "quarter turn")
        for _ in range(3):
            y = invfast.affine_warp(y, m, mode=mode)
        assert_close(y, x, 1e-5, 0, "four quarter turns")

    @pytest.mark.parametrize("device", DEVICES)
    def test_exact_quarter_turn_of_random_image(self, device):
        x = images_like(1, 3, 9, 9, device=device)
        m = torch.tensor([[[0.0, 1.0, 0.0], [-1.0, 0.0, 8.0]]], device=device)
        y = invfast.affine_warp(x, m)
        assert torch.equal(y, torch.rot90(x, 1, dims=(2, 3)))

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("padding_mode", ["zeros", "fill"])
    def test_integer_shift(self, device, padding_mode):
        x = images_like(2, 3, 6, 8, device=device)
        m = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], device=device).expand(2, 2, 3)
        y = invfast.affine_warp(x, m, padding_mode=padding_mode, fill=0.5)
        pad = 0.5 if padding_mode == "fill" else 0.0
        expected = torch.full_like(x, pad)
        expected[:, :, :5, 2:] = x[:, :, 1:, :6]  # out[y, x] = in[y + 1, x - 2]
        assert torch.equal(y, expected)

    @pytest.mark.parametrize("device", DEVICES)
    def test_float64_fill_is_not_rounded(self, device):
        # A shift by whole pixels: the uncovered columns read the fill value,
        # which float64 images take exactly (0.1 is not a float32 value).
        x = images_like(2, 3, 6, 8, dtype=torch.float64, device=device)
        m = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]], device=device).expand(2, 2, 3)
        fill = [0.1, -0.3, 1 / 3]
        y = invfast.affine_warp(x, m, padding_mode="fill", fill=fill)
        expected = torch.tensor(fill, dtype=torch.float64, device=device).view(1, 3, 1, 1)
        assert torch.equal(y[..., :3], expected.expand(2, 3, 6, 3))
        assert torch.equal(y[..., 3:], x[..., :5])

    @pytest.mark.parametrize("device", DEVICES)
    def test_horizontal_flip_is_exact(self, device):
        x = images_like(2, 3, 5, 8, device=device)
        m = torch.tensor([[-1.0, 0.0, 7.0], [0.0, 1.0, 0.0]], device=device).expand(2, 2, 3)
        assert torch.equal(invfast.affine_warp(x, m), x.flip(-1))

    @pytest.mark.parametrize("device", DEVICES)
    def test_zoom_into_a_smaller_output(self, device):
        # A half-size output of a 2x downscale about the origin reads every other pixel.
        x = images_like(1, 2, 10, 12, device=device)
        m = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]], device=device)
        y = invfast.affine_warp(x, m, size=(5, 6))
        assert torch.equal(y, x[:, :, ::2, ::2])


@needs_kernels
class TestGradients:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    @pytest.mark.parametrize("align_corners", [False, True])
    def test_gradcheck(self, device, mode, padding_mode, align_corners):
        x = images_like(2, 2, 6, 7, dtype=torch.float64, device=device).requires_grad_()
        m = random_matrices(2, 6, 7, seed=4, strength=0.3, dtype=torch.float64).to(device)

        def f(x):
            return invfast.affine_warp(
                x,
                m,
                mode=mode,
                padding_mode=padding_mode,
                align_corners=align_corners,
                fill=0.7,
                size=(5, 8),
            )

        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_gradient_matches_reference_fp32(self, device, padding_mode):
        x = images_like(3, 3, 20, 17, device=device).requires_grad_()
        m = random_matrices(3, 20, 17, seed=8).to(device)
        g = images_like(3, 3, 15, 22, seed=1, device=device)
        kw = dict(padding_mode=padding_mode, size=(15, 22))
        (got,) = torch.autograd.grad(invfast.affine_warp(x, m, **kw), x, g)
        xr = x.detach().double().requires_grad_()
        (expected,) = torch.autograd.grad(
            reference.affine_warp(xr, m.double(), **kw), xr, g.double()
        )
        assert_close(got, expected, 1e-5, 1e-5, "grad images")

    def test_matrix_gradient_runs_in_the_kernel(self):
        x = images_like(2, 1, 8, 8)
        m = random_matrices(2, 8, 8, seed=1, strength=0.2).requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to the reference
            y = invfast.affine_warp(x, m)
        y.sum().backward()
        assert m.grad is not None and torch.isfinite(m.grad).all()

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
    @pytest.mark.parametrize("padding_mode", ["zeros", "reflection", "fill"])
    def test_opcheck(self, device, dtype, padding_mode):
        x = images_like(2, 3, 7, 9, dtype=dtype, device=device).requires_grad_()
        m = random_matrices(2, 7, 9, seed=6).to(device)
        args = (x, m, "bilinear", padding_mode, False, [0.5], [6, 10])
        torch.library.opcheck(torch.ops.invfast.affine_warp.default, args)
        out = torch.empty(2, 3, 6, 10, dtype=dtype, device=device)
        torch.library.opcheck(
            torch.ops.invfast.affine_warp_out.default,
            (x.detach(), m, "nearest", padding_mode, True, [0.5], out),
        )
        cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        torch.library.opcheck(torch.ops.invfast.affine_warp.default, (cl, *args[1:]))


@needs_kernels
class TestLargeOutputCache:
    """Large CPU outputs (32 MiB and more) come from a cache of freed blocks."""

    # 8 x 3 x 600 x 600 float32: 33 MB.
    SHAPE = (8, 3, 600, 600)

    def test_a_freed_output_is_reused_and_fully_rewritten(self):
        x = torch.rand(self.SHAPE)
        m = random_matrices(8, 600, 600, seed=4)
        first = invfast.affine_warp(x, m)
        expected = first.clone()
        ptr = first.data_ptr()
        first.fill_(float("nan"))  # what the next output will find in the block
        del first
        again = invfast.affine_warp(x, m)
        assert again.data_ptr() == ptr
        assert not again.untyped_storage().resizable()  # the cache's block
        assert torch.equal(again, expected)
        # A live output is never handed out twice.
        other = invfast.affine_warp(x, m)
        assert other.data_ptr() != again.data_ptr()
        assert torch.equal(other, expected)
        # The tensors behave as any other: views, copies, numpy, autograd inputs.
        assert other.is_contiguous() and other.numpy().shape == self.SHAPE
        y = invfast.warp_normalize(
            torch.randint(0, 256, (8, 600, 600, 3), dtype=torch.uint8).permute(0, 3, 1, 2),
            m,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
        )
        assert y.shape == self.SHAPE and torch.isfinite(y).all()

    def test_outputs_held_at_once_are_distinct(self):
        x = torch.rand(self.SHAPE)
        m = random_matrices(8, 600, 600, seed=5)
        outs = [invfast.affine_warp(x, m) for _ in range(6)]
        assert len({o.data_ptr() for o in outs}) == 6
        assert all(torch.equal(o, outs[0]) for o in outs[1:])
        expected = outs[0].clone()
        del outs
        assert torch.equal(invfast.affine_warp(x, m), expected)
        # Small outputs are ordinary allocations.
        assert invfast.affine_warp(x[:1, :, :50, :50], m[:1]).untyped_storage().resizable()

    def test_can_be_turned_off(self):
        code = (
            "import torch, invfast\n"
            "x = torch.rand(8, 3, 600, 600); m = torch.eye(2, 3).expand(8, 2, 3)\n"
            "a = invfast.affine_warp(x, m); p = a.data_ptr(); del a\n"
            "b = invfast.affine_warp(x, m)\n"
            "assert torch.equal(b, x)\n"
            "print(b.untyped_storage().resizable())\n"
        )
        env = {**os.environ, "INVFAST_CPU_OUTPUT_CACHE": "0"}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        # An ordinary allocation, not a block of the cache.
        assert run.stdout.strip() == "True"


@needs_kernels
class TestEdgeCases:
    @pytest.mark.parametrize("device", DEVICES)
    def test_out_buffer(self, device):
        x = images_like(2, 3, 8, 9, device=device)
        m = random_matrices(2, 8, 9, seed=2).to(device)
        out = torch.full((2, 3, 5, 6), float("nan"), device=device)
        res = invfast.affine_warp(x, m, size=(5, 6), out=out)
        assert res is out
        assert torch.equal(out, invfast.affine_warp(x, m, size=(5, 6)))
        with pytest.raises(ValueError, match="out must have shape"):
            invfast.affine_warp(x, m, out=out)
        with pytest.raises(RuntimeError, match="out= does not support autograd"):
            invfast.affine_warp(x, m.clone().requires_grad_(), size=(5, 6), out=out)
        with pytest.raises(RuntimeError, match="out= does not support autograd"):
            invfast.affine_warp(x.requires_grad_(), m, size=(5, 6), out=out)

    @pytest.mark.parametrize("device", DEVICES)
    def test_out_sharing_memory_is_refused(self, device):
        ops = torch.ops.invfast
        big = images_like(3, 3, 8, 8, device=device)
        x, m = big[:2], random_matrices(2, 8, 8, seed=3).to(device)
        args = ("bilinear", "zeros", False, [0.0])
        with pytest.raises(RuntimeError, match="out must not share memory with images"):
            ops.affine_warp_out(x, m, *args, x)
        with pytest.raises(RuntimeError, match="out must not share memory with images"):
            ops.affine_warp_out(x, m, *args, big[1:])  # overlaps the second image
        flat = torch.zeros(2 * 3 * 8 * 8 + 12, device=device)
        mats = flat[:12].view(2, 2, 3)
        mats.copy_(m)
        with pytest.raises(RuntimeError, match="out must not share memory with matrices"):
            ops.affine_warp_out(x.clone(), mats, *args, flat[6 : 6 + 384].view(2, 3, 8, 8))
        with pytest.raises(RuntimeError, match="out must not have elements that share memory"):
            ops.affine_warp_out(
                x, m, *args, torch.zeros(1, 3, 8, 8, device=device).expand(2, -1, -1, -1)
            )
        u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, device=device)
        stats = torch.zeros(8, device=device)
        mean, std = stats[:3], stats[3:6].fill_(1.0)
        with pytest.raises(RuntimeError, match="out must not share memory with mean"):
            out = torch.empty(2 * 3 * 8 * 8, device=device)
            ops.warp_normalize_out(u8, m, out[:3], std, *args, out.view(2, 3, 8, 8))
        out = torch.empty(2, 3, 8, 8, device=device)
        ops.warp_normalize_out(u8, m, mean, std, *args, out)  # apart: fine
        ops.affine_warp_out(x, m, *args, big[2:].expand(2, -1, -1, -1).clone())

    @pytest.mark.parametrize("device", DEVICES)
    def test_out_sharing_memory_in_strided_layouts_is_refused(self, device):
        # Slices that are not dense, where ATen's overlap test gives up.
        ops = torch.ops.invfast
        big = images_like(2, 3, 9, 8, device=device)
        x, m = big[:, :, :8], random_matrices(2, 8, 8, seed=3).to(device)
        args = ("bilinear", "zeros", False, [0.0])
        with pytest.raises(RuntimeError, match="out must not share memory with images"):
            invfast.affine_warp(x, m, out=big[:, :, 1:])  # one row down
        with pytest.raises(RuntimeError, match="out must not share memory with images"):
            invfast.RandomAffine(30, seed=0)(x, out=big[:, :, 1:])
        u8 = torch.randint(0, 256, (2, 3, 9, 8), dtype=torch.uint8, device=device)
        std = torch.ones(3, device=device)
        with pytest.raises(RuntimeError, match="out must not share memory with mean"):
            out = torch.zeros(2, 3, 8, 9, device=device)
            ops.warp_normalize_out(u8[:, :, :8], m, out[0, :, 0, 1], std, *args, out[..., 1:])
        # An out whose strides make two elements one location.
        flat = torch.zeros(400, device=device)
        with pytest.raises(RuntimeError, match="out must not have elements that share memory"):
            ops.affine_warp_out(x, m, *args, flat.as_strided((2, 3, 8, 8), (192, 64, 8, 2)))
        # Strided buffers that share no memory with the inputs still work.
        wide = torch.full((2, 3, 8, 16), float("nan"), device=device)
        expected = invfast.affine_warp(x, m)
        # (A strided output takes the scalar path, which rounds apart.)
        for out in (wide[..., ::2], wide[..., 8:]):
            assert_close(invfast.affine_warp(x, m, out=out), expected, 1e-5, 1e-5, "strided out")

    def test_out_on_memory_that_two_storages_share_is_refused(self):
        np = pytest.importorskip("numpy")
        base = np.random.default_rng(0).random(2 * 3 * 8 * 8 + 5).astype(np.float32)
        x = torch.from_numpy(base[: 2 * 3 * 8 * 8].reshape(2, 3, 8, 8))
        out = torch.from_numpy(base[3 : 3 + 2 * 3 * 8 * 8].reshape(2, 3, 8, 8))
        with pytest.raises(RuntimeError, match="out must not share memory with images"):
            invfast.affine_warp(x, random_matrices(2, 8, 8, seed=3), out=out)

    @pytest.mark.parametrize("device", DEVICES)
    def test_empty_shapes(self, device):
        m = torch.eye(2, 3, device=device).expand(2, 2, 3)
        assert invfast.affine_warp(torch.rand(0, 3, 5, 5, device=device), m[:0]).shape == (
            0,
            3,
            5,
            5,
        )
        assert invfast.affine_warp(torch.rand(2, 0, 5, 5, device=device), m).shape == (2, 0, 5, 5)
        x = torch.rand(2, 3, 5, 5, device=device)
        assert invfast.affine_warp(x, m, size=(0, 4)).shape == (2, 3, 0, 4)
        y = invfast.affine_warp(
            torch.rand(2, 3, 0, 5, device=device), m, size=(2, 2), padding_mode="fill", fill=3.0
        )
        assert torch.equal(y, torch.full((2, 3, 2, 2), 3.0, device=device))

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    @pytest.mark.parametrize("mode", MODES)
    def test_non_finite_and_huge_matrices(self, device, padding_mode, mode):
        x = images_like(5, 2, 6, 6, device=device)
        m = torch.tensor(
            [
                [[float("nan"), 0, 0], [0, 1, 0]],
                [[float("inf"), 0, 0], [0, 1, 0]],
                [[0, 0, 0], [0, 0, 0]],  # singular
                [[1e-30, 0, 0], [0, 1e-30, 0]],  # positions near 1e30
                [[1, 0, 1e30], [0, 1, -1e30]],
            ],
            device=device,
        )
        kw = dict(mode=mode, padding_mode=padding_mode, fill=0.5)
        got = invfast.affine_warp(x, m, **kw)
        assert torch.isfinite(got).all()
        value = 0.5 if padding_mode == "fill" else 0.0
        # NOTE: the reference loses these positions to rounding in grid_sample's
        # normalised space (1e30 times a rounding error is not 0), so the
        # expectations are worked out here.
        assert (got[:3] == value).all()
        if padding_mode in ("zeros", "fill"):
            assert (got[4] == value).all()
            # Only output pixel (0, 0) maps inside, onto input pixel (0, 0).
            expected = torch.full_like(x[3], value)
            expected[:, 0, 0] = x[3, :, 0, 0]
            assert torch.equal(got[3], expected)
        else:
            # Row 0 reads input row 0 (x = 1e30 u is clamped or mirrored into the image).
            assert (got[3, :, 0, 0] == x[3, :, 0, 0]).all()

    def test_non_finite_images_stay_local(self):
        x = torch.ones(1, 1, 6, 6)
        x[0, 0, 0, 0] = float("nan")
        m = torch.tensor([[[1.0, 0.0, 3.5], [0.0, 1.0, 3.5]]])
        y = invfast.affine_warp(x, m)
        # Pixels whose taps all fall outside the image must not pick up the NaN.
        assert torch.isnan(y).sum() == 4 and (y[0, 0, :3] == 0).all()


class TestErrors:
    def test_messages_name_the_argument(self):
        x = torch.rand(2, 3, 8, 8)
        m = torch.eye(2, 3).expand(2, 2, 3)
        cases = [
            (dict(images=x[0]), ValueError, "images must be \\(B, C, H, W\\)"),
            (dict(matrices=m[:, :1]), ValueError, "matrices must be \\(B, 2, 3\\)"),
            (dict(matrices=m[:1]), ValueError, "one matrix per image"),
            (dict(images=x.int()), TypeError, "images must be float32"),
            (dict(matrices=m.int()), TypeError, "matrices must be a floating-point"),
            (dict(mode="bicubicle"), ValueError, "mode must be one of"),
            (dict(matrices=m.expand(3, 2, 2, 3)[:, :1]), ValueError, "one matrix per image"),
            (dict(matrices=m[None, None]), ValueError, "matrices must be \\(B, 2, 3\\)"),
            (dict(fill=[1.0, 2.0]), ValueError, "fill must be one number or C"),
            (dict(out_dtype=torch.int32), TypeError, "out_dtype must be"),
            (dict(padding_mode="wrap"), ValueError, "padding_mode must be one of"),
            (dict(size=(4,)), ValueError, "size must be two"),
            (dict(size=(-1, 4)), ValueError, "size must be two"),
            (dict(matrices=m.to("meta")), ValueError, "one device"),
            (dict(images=[1, 2]), TypeError, "images must be a Tensor"),
        ]
        for change, exc, pattern in cases:
            kw = dict(images=x, matrices=m)
            kw.update(change)
            images, matrices = kw.pop("images"), kw.pop("matrices")
            with pytest.raises(exc, match=pattern):
                invfast.affine_warp(images, matrices, **kw)

    @needs_kernels
    def test_cpp_checks(self):
        x = torch.rand(2, 3, 8, 8)
        m = torch.eye(2, 3).expand(2, 2, 3)
        op = torch.ops.invfast.affine_warp
        f = [0.0]
        with pytest.raises(RuntimeError, match="mode must be 'bilinear', 'nearest' or 'bicubic'"):
            op(x, m, "cubic", "zeros", False, f, [8, 8])
        with pytest.raises(RuntimeError, match="padding_mode must be"):
            op(x, m, "bilinear", "wrap", False, f, [8, 8])
        with pytest.raises(RuntimeError, match="matrices must be"):
            op(x, m[:, :, :2], "bilinear", "zeros", False, f, [8, 8])
        with pytest.raises(RuntimeError, match="one matrix per image"):
            op(x, m[:1], "bilinear", "zeros", False, f, [8, 8])
        with pytest.raises(RuntimeError, match="size must be"):
            op(x, m, "bilinear", "zeros", False, f, [8, -8])
        with pytest.raises(RuntimeError, match="images must be uint8, float16"):
            op(x.to(torch.int32), m, "bilinear", "zeros", False, f, [8, 8])
        with pytest.raises(RuntimeError, match="fill must hold 1 or C"):
            op(x, m, "bilinear", "fill", False, [1.0, 2.0], [8, 8])
        with pytest.raises(RuntimeError, match="float64 goes with float64"):
            op(x.double(), m, "bilinear", "zeros", False, f, [8, 8], torch.float32)
        norm = torch.ops.invfast.warp_normalize
        xb = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
        mean = torch.zeros(3)
        with pytest.raises(RuntimeError, match="images must be uint8"):
            norm(x, m, mean, mean + 1, "bilinear", "zeros", False, f, [8, 8], torch.float32)
        with pytest.raises(RuntimeError, match="std must hold C"):
            norm(xb, m, mean, mean[:2], "bilinear", "zeros", False, f, [8, 8], torch.float32)
        with pytest.raises(RuntimeError, match="out_dtype must be float32"):
            norm(xb, m, mean, mean + 1, "bilinear", "zeros", False, f, [8, 8], torch.uint8)


class TestBackend:
    def test_reference_backend_and_fallbacks(self):
        x = images_like(2, 3, 9, 9)
        m = random_matrices(2, 9, 9, seed=9)
        expected = reference.affine_warp(x, m)
        _ops.set_backend("reference")
        try:
            assert invfast.backend_info()["backend"] == "reference"
            assert torch.equal(invfast.affine_warp(x, m), expected)
        finally:
            _ops.set_backend("auto")
        xb = (x * 255).round().to(torch.uint8)
        y = invfast.affine_warp(xb, m)
        assert y.dtype == torch.uint8
        expected = reference.affine_warp(xb.float(), m).round().clamp(0, 255)
        # A value within rounding of a .5 tie may round either way.
        assert (y.double() - expected.double()).abs().max() <= 1

    def test_backend_info(self):
        info = invfast.backend_info()
        assert info["version"] == invfast.__version__
        if info["extension_loaded"]:
            assert info["cpu_kernels"]
            assert info["built_for_torch"] == torch.__version__.split("+")[0]
            if info["built_for_cuda"] != "none":
                # Built with nvcc: the dispatcher must hold the CUDA kernels.
                ops = (
                    "affine_warp",
                    "affine_warp_out",
                    "affine_warp_backward",
                    "warp_normalize",
                    "warp_normalize_out",
                )
                for op in ops:
                    assert _ops.has_kernel(op, "cuda"), op


class TestRandomAffine:
    @pytest.mark.parametrize("device", DEVICES)
    def test_returned_matrices_reproduce_views(self, device):
        x = images_like(6, 3, 20, 24, device=device)
        aug = invfast.RandomAffine(30, translate=(0.1, 0.2), scale=(0.8, 1.2), shear=10)
        g = torch.Generator(device=device).manual_seed(0)
        views, m = aug(x, generator=g, return_matrices=True)
        assert m.shape == (6, 2, 3) and m.device == x.device
        assert torch.equal(views, invfast.affine_warp(x, m))
        g.manual_seed(0)
        assert torch.equal(aug(x, generator=g), views)
        # Every sample has its own parameters.
        assert len({tuple(r.flatten().tolist()) for r in m.cpu()}) == 6

    def test_parameters_stay_in_range(self):
        x = torch.zeros(4000, 1, 10, 20)
        aug = invfast.RandomAffine(degrees=(10, 20), scale=(0.5, 0.75), hflip=0.0)
        m = aug.sample_matrices(x, generator=torch.Generator().manual_seed(1)).double()
        det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
        scale = det.sqrt()
        assert scale.min() >= 0.5 - 1e-6 and scale.max() <= 0.75 + 1e-6
        angle = torch.rad2deg(torch.atan2(m[:, 0, 1], m[:, 0, 0]))
        assert angle.min() >= 10 - 1e-4 and angle.max() <= 20 + 1e-4
        # The image centre stays put without translation.
        c = torch.tensor([9.5, 4.5, 1.0], dtype=torch.float64)
        assert_close(m @ c, c[:2].expand(4000, 2), 1e-4, 0, "centre")

    def test_flip_and_probability(self):
        x = images_like(16, 3, 8, 8)
        flip = invfast.RandomAffine(hflip=1.0)
        assert torch.equal(flip(x), x.flip(-1))
        off = invfast.RandomAffine(degrees=45, p=0.0)
        assert torch.equal(off(x), x)
        half = invfast.RandomAffine(degrees=45, hflip=0.0, p=0.5)
        m = half.sample_matrices(torch.zeros(2000, 1, 4, 4))
        identity = (m == torch.eye(2, 3)).flatten(1).all(1).float().mean()
        assert 0.4 < identity < 0.6

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="degrees"):
            invfast.RandomAffine(degrees=(30, 10))
        with pytest.raises(ValueError, match="translate"):
            invfast.RandomAffine(translate=(1.5, 0))
        with pytest.raises(ValueError, match="scale"):
            invfast.RandomAffine(scale=(0.0, 1.0))
        with pytest.raises(ValueError, match="hflip"):
            invfast.RandomAffine(hflip=2)
        with pytest.raises(ValueError, match="images must be"):
            invfast.RandomAffine(10)(torch.rand(3, 8, 8))


def test_geometry_helpers():
    m = random_matrices(3, 10, 10, seed=12, dtype=torch.float64)
    inv = geometry.invert(m)
    assert_close(geometry.compose(m, inv), torch.eye(3).expand(3, 3, 3), 1e-12, 0, "m then inv")
    pts = torch.rand(3, 5, 2, dtype=torch.float64) * 10
    back = geometry.transform_points(inv, geometry.transform_points(m, pts))
    assert_close(back, pts, 1e-10, 0, "points round trip")
    shift = torch.tensor([[[1.0, 0, 2], [0, 1, 3]]])
    boxes = torch.tensor([[[0.0, 0, 4, 5]]])
    assert torch.equal(geometry.transform_boxes(shift, boxes), torch.tensor([[[2.0, 3, 6, 8]]]))
    rot = torch.tensor([[[0.0, 1, 0], [-1, 0, 8]]])
    assert math.isclose(geometry.transform_boxes(rot, boxes)[0, 0, 2].item(), 5.0)


# ---------------------------------------------------------------------------
# dtypes, layouts, output dtypes, multi-view, fill per channel, normalising warp.

IN_DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]
LAYOUTS = ["nchw", "channels_last"]


def in_layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def typed_images(B, C, H, W, dtype, device, seed=0):
    x = images_like(B, C, H, W, seed=seed, device=device)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    return x.to(dtype)


def expected_warp(x, m, out_dtype, **kw):
    """The float64 reference, rounded (uint8) or cast to out_dtype."""
    y = reference.affine_warp(x.double(), m.double(), **kw)
    if out_dtype == torch.uint8:
        return y.round().clamp(0, 255)
    return y.to(out_dtype).double()


def check_warp(got, expected, mode, out_dtype, scale, what):
    got = got.double().cpu()
    expected = expected.cpu()
    if out_dtype == torch.uint8:
        diff = (got - expected).abs()
        # A value within rounding of a .5 tie may round either way; nearest
        # taps within rounding of a tie may pick the neighbour.
        assert diff.max() <= (255 if mode == "nearest" else 1), what
        assert (diff > 1).float().mean() < 0.002, what
        return
    atol, rtol = TOLERANCES[out_dtype]
    if out_dtype == torch.float32:
        atol = 2e-5
    if mode == "nearest":
        differ = (got - expected).abs() > atol * scale + rtol * expected.abs()
        assert differ.float().mean() < 0.002, f"{what}: {int(differ.sum())} nearest pixels differ"
    else:
        assert_close(got, expected, atol * scale, rtol, what)


@needs_kernels
class TestDtypesAndLayouts:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", IN_DTYPES)
    @pytest.mark.parametrize("out_dtype", [None, torch.uint8, torch.float32])
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_against_reference(self, device, dtype, out_dtype, layout, mode, padding_mode):
        x = in_layout(typed_images(2, 3, 11, 14, dtype, device), layout)
        m = random_matrices(2, 11, 14, seed=7).to(device)
        scale = 255.0 if dtype == torch.uint8 else 1.0
        fill = [0.3 * scale, 0.5 * scale, 0.9 * scale]
        kw = dict(mode=mode, padding_mode=padding_mode, fill=fill, size=(9, 16))
        got = invfast.affine_warp(x, m, out_dtype=out_dtype, **kw)
        odt = dtype if out_dtype is None else out_dtype
        assert got.dtype == odt and got.shape == (2, 3, 9, 16)
        if layout == "channels_last":
            assert got.is_contiguous(memory_format=torch.channels_last)
        expected = expected_warp(x, m, odt, **kw)
        check_warp(got, expected, mode, odt, scale, f"{dtype}->{odt} {layout}")

    @pytest.mark.parametrize("C", [1, 2, 3, 4])
    @pytest.mark.parametrize("mode", ["bilinear", "nearest"])
    def test_uint8_channels_last_reads_up_to_the_last_pixel(self, C, mode):
        # The vector path gathers 4 bytes per tap; near the last pixel of the
        # tensor that would pass its end, so those rows must take the scalar
        # path (the sanitizer build checks that nothing past the end is read).
        x = in_layout(typed_images(2, C, 12, 20, torch.uint8, "cpu"), "channels_last")
        shift = torch.tensor([[1.0, 0.0, -0.25], [0.0, 1.0, -0.25]]).expand(2, 2, 3)
        kw = dict(mode=mode, size=(12, 24))
        got = invfast.affine_warp(x, shift, out_dtype=torch.float32, **kw)
        expected = expected_warp(x, shift, torch.float32, **kw)
        check_warp(got, expected, mode, torch.float32, 255.0, f"uint8 C={C} {mode}")
        assert got[:, :, -1, 19].ne(0).any()

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("layout", LAYOUTS)
    def test_uint8_rounds_to_nearest_and_saturates(self, device, layout):
        # A half-pixel shift averages neighbours: (10 + 11) / 2 = 10.5 -> 10 and
        # (11 + 12) / 2 = 11.5 -> 12 (ties to even, as torch.round).
        x = torch.tensor([[[[10, 11, 12, 13]]]], dtype=torch.uint8, device=device)
        m = torch.tensor([[[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]]], device=device)
        y = invfast.affine_warp(in_layout(x, layout), m, padding_mode="border")
        assert y[0, 0, 0].tolist() == [10, 12, 12, 13]
        # Bicubic overshoots at a 0 -> 255 step: below 0 and above 255 saturate.
        step = torch.tensor([0, 0, 0, 255, 255, 255], dtype=torch.uint8, device=device)
        x = step.view(1, 1, 1, 6).expand(1, 3, 4, 6).contiguous()
        m = torch.tensor([[[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]]], device=device)
        kw = dict(mode="bicubic", padding_mode="border")
        y = invfast.affine_warp(in_layout(x, layout), m, **kw)
        f = invfast.affine_warp(x.float(), m, **kw)
        assert f.min() < -1 and f.max() > 256  # the float result overshoots
        assert torch.equal(y, f.round().clamp(0, 255).to(torch.uint8))
        assert y.min() == 0 and y.max() == 255
        # float -> uint8 output saturates too, and NaN becomes 0.
        x = torch.tensor([[[[-7.0, 300.0, float("nan"), 254.5]]]], device=device)
        y = invfast.affine_warp(x, torch.eye(2, 3, device=device)[None], out_dtype=torch.uint8)
        assert y[0, 0, 0].tolist() == [0, 255, 0, 254]

    @pytest.mark.parametrize("device", DEVICES)
    def test_per_channel_fill(self, device):
        x = images_like(2, 3, 8, 9, device=device)
        m = torch.tensor([[1.0, 0.0, 20.0], [0.0, 1.0, 0.0]], device=device).expand(2, 2, 3)
        fill = torch.tensor([0.1, 0.2, 0.3])
        for value in (fill, fill.tolist(), tuple(fill.tolist())):
            y = invfast.affine_warp(x, m, padding_mode="fill", fill=value)
            assert torch.equal(y, fill.to(device).view(1, 3, 1, 1).expand_as(y))
        # fill counts only for padding "fill".
        assert (invfast.affine_warp(x, m, fill=fill) == 0).all()


@needs_kernels
class TestMultiView:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", IN_DTYPES + [torch.float64])
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("mode", MODES)
    def test_equals_single_calls_exactly(self, device, dtype, layout, mode):
        K, B = 3, 4
        x = in_layout(typed_images(B, 3, 13, 10, dtype, device), layout)
        m = torch.stack([random_matrices(B, 13, 10, seed=s) for s in range(K)]).to(device)
        m[1, 2] = torch.eye(2, 3)  # an untouched sample among the views
        kw = dict(mode=mode, padding_mode="reflection", size=(12, 17))
        views = invfast.affine_warp(x, m, **kw)
        assert views.shape == (K, B, 3, 12, 17)
        for k in range(K):
            assert torch.equal(views[k], invfast.affine_warp(x, m[k], **kw)), k
        out = torch.empty_like(views)
        invfast.affine_warp(x, m, out=out, **kw)
        assert torch.equal(out, views)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("nhwc", [False, True])
    def test_normalize_equals_single_calls_exactly(self, device, nhwc):
        x = typed_images(3, 3, 12, 15, torch.uint8, device)
        if nhwc:
            x = x.permute(0, 2, 3, 1).contiguous()
        m = torch.stack([random_matrices(3, 12, 15, seed=s) for s in range(2)]).to(device)
        kw = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], nhwc=nhwc)
        views = invfast.warp_normalize(x, m, **kw)
        assert views.shape == (2, 3, 3, 12, 15) and views.is_contiguous()
        for k in range(2):
            assert torch.equal(views[k], invfast.warp_normalize(x, m[k], **kw))

    def test_geometry_helpers_take_views(self):
        m = torch.stack([random_matrices(3, 10, 10, seed=s, dtype=torch.float64) for s in (1, 2)])
        pts = torch.rand(3, 5, 2, dtype=torch.float64) * 10
        moved = geometry.transform_points(m, pts)
        assert moved.shape == (2, 3, 5, 2)
        assert torch.equal(moved[1], geometry.transform_points(m[1], pts))
        boxes = torch.tensor([[[1.0, 2.0, 5.0, 7.0]]], dtype=torch.float64).expand(3, 1, 4)
        assert geometry.transform_boxes(m, boxes).shape == (2, 3, 1, 4)
        assert_close(
            geometry.compose(m, geometry.invert(m)), torch.eye(3).expand(2, 3, 3, 3), 1e-12, 0
        )


@needs_kernels
class TestWarpNormalize:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("nhwc", [False, True])
    @pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_against_warp_then_normalise(self, device, nhwc, out_dtype, mode, padding_mode):
        x = typed_images(2, 3, 14, 11, torch.uint8, device)
        m = random_matrices(2, 14, 11, seed=3).to(device)
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        fill = [10.0, 128.0, 250.0]
        kw = dict(mode=mode, padding_mode=padding_mode, fill=fill, size=(13, 12))
        src = x.permute(0, 2, 3, 1).contiguous() if nhwc else x
        got = invfast.warp_normalize(src, m, mean, std, nhwc=nhwc, out_dtype=out_dtype, **kw)
        assert got.dtype == out_dtype and got.is_contiguous() and got.shape == (2, 3, 13, 12)
        warped = invfast.affine_warp(x, m, out_dtype=torch.float32, **kw)
        mt = torch.tensor(mean, device=device).view(3, 1, 1)
        st = torch.tensor(std, device=device).view(3, 1, 1)
        expected = ((warped.float() / 255 - mt) / st).to(out_dtype)
        atol, rtol = (1e-5, 1e-5) if out_dtype == torch.float32 else TOLERANCES[out_dtype]
        assert_close(got, expected, atol * 4, rtol, "warp_normalize")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("out_layout", ["contiguous", "channels_last"])
    def test_out_buffer(self, device, out_layout):
        x = typed_images(3, 3, 12, 15, torch.uint8, device).permute(0, 2, 3, 1).contiguous()
        m = torch.stack([random_matrices(3, 12, 15, seed=s) for s in range(2)]).to(device)
        kw = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], nhwc=True, size=(10, 13))
        expected = invfast.warp_normalize(x, m, **kw)
        out = torch.full((2 * 3, 3, 10, 13), float("nan"), device=device)
        out = in_layout(out, out_layout).view(2, 3, 3, 10, 13)
        got = invfast.warp_normalize(x, m, out=out, **kw)
        assert got is out
        # A channels_last output takes the scalar path, which rounds apart.
        tol = 0 if out_layout == "contiguous" else 1e-5
        assert_close(out, expected, tol, tol, f"warp_normalize out= {out_layout}")
        with pytest.raises(ValueError, match="out must have shape"):
            invfast.warp_normalize(x, m[0], out=out, **kw)
        with pytest.raises(ValueError, match="out must be torch.float32"):
            invfast.warp_normalize(x, m, out=out.half(), **kw)
        with pytest.raises(RuntimeError, match="out= does not support autograd"):
            invfast.warp_normalize(x, m.clone().requires_grad_(), out=out, **kw)
        nchw = x.permute(0, 3, 1, 2)
        torch.library.opcheck(
            torch.ops.invfast.warp_normalize_out.default,
            (
                nchw,
                m,
                *(torch.tensor(v) for v in (kw["mean"], kw["std"])),
                "bilinear",
                "zeros",
                False,
                [0.0],
                torch.empty(2, 3, 3, 10, 13, device=device),
            ),
        )

    @pytest.mark.parametrize("device", DEVICES)
    def test_padding_is_the_normalised_fill(self, device):
        x = torch.full((1, 3, 5, 5), 7, dtype=torch.uint8, device=device)
        m = torch.tensor([[[1.0, 0.0, 50.0], [0.0, 1.0, 0.0]]], device=device)
        mean, std = [0.5, 0.25, 0.0], [0.5, 0.25, 1.0]
        y = invfast.warp_normalize(x, m, mean, std)
        assert_close(y[0, :, 0, 0], -torch.tensor(mean) / torch.tensor(std), 1e-6, 0)
        y = invfast.warp_normalize(x, m, mean, std, padding_mode="fill", fill=[255, 0, 51])
        assert_close(y[0, :, 0, 0], torch.tensor([1.0, -1.0, 0.2]), 1e-6, 0)

    def test_errors_name_the_argument(self):
        x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
        m = torch.eye(2, 3).expand(2, 2, 3)
        mean, std = [0.5] * 3, [0.2] * 3
        with pytest.raises(TypeError, match="images must be uint8"):
            invfast.warp_normalize(x.float(), m, mean, std)
        with pytest.raises(ValueError, match="mean must hold C \\(3\\) values"):
            invfast.warp_normalize(x, m, [0.5, 0.5], std)
        with pytest.raises(ValueError, match="std must hold C \\(3\\) values"):
            invfast.warp_normalize(x, m, mean, torch.ones(4))
        with pytest.raises(ValueError, match="images must be \\(B, H, W, C\\)"):
            invfast.warp_normalize(x[0], m, mean, std, nhwc=True)
        with pytest.raises(ValueError, match="one matrix per image"):
            invfast.warp_normalize(x, m[:1], mean, std)
        with pytest.raises(ValueError, match="one matrix per image"):
            invfast.warp_normalize(x, m.expand(2, 2, 2, 3)[:, :1], mean, std)
        with pytest.raises(TypeError, match="out_dtype must be float32"):
            invfast.warp_normalize(x, m, mean, std, out_dtype=torch.uint8)

    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck(self, device):
        x = typed_images(2, 3, 7, 9, torch.uint8, device)
        m = random_matrices(2, 7, 9, seed=6).to(device)
        mean = torch.tensor([0.4, 0.5, 0.6], device=device)
        std = torch.tensor([0.2, 0.3, 0.25], device=device)
        for mats, xx in ((m, x), (torch.stack([m, m.flip(0)]), in_layout(x, "channels_last"))):
            args = (xx, mats, "bilinear", "fill", False, [3.0, 4.0, 5.0], [6, 10], torch.float32)
            torch.library.opcheck(
                torch.ops.invfast.warp_normalize.default, (xx, mats, mean, std, *args[2:])
            )


@needs_kernels
class TestNewOpchecks:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", MODES)
    def test_affine_warp_variants(self, device, mode):
        x = images_like(2, 3, 7, 9, device=device).requires_grad_()
        m = random_matrices(2, 7, 9, seed=6).to(device).requires_grad_()
        mk = torch.stack([m.detach(), m.detach().flip(0)]).requires_grad_()
        f = [0.1, 0.2, 0.3]
        op = torch.ops.invfast.affine_warp.default
        torch.library.opcheck(op, (x, m, mode, "fill", False, f, [6, 10]))
        torch.library.opcheck(op, (x, mk, mode, "reflection", True, f, [6, 10]))
        xb = typed_images(2, 3, 7, 9, torch.uint8, device)
        torch.library.opcheck(
            op, (xb, m.detach(), mode, "zeros", False, [0.0], [5, 5], torch.float32)
        )
        torch.library.opcheck(
            op, (x.detach().half(), mk.detach(), mode, "border", False, [0.0], [5, 5], torch.uint8)
        )
        out = torch.empty(2, 2, 3, 6, 10, device=device)
        torch.library.opcheck(
            torch.ops.invfast.affine_warp_out.default,
            (x.detach(), mk.detach(), mode, "fill", False, f, out),
        )
        g = torch.randn(2, 2, 3, 6, 10, device=device)
        torch.library.opcheck(
            torch.ops.invfast.affine_warp_backward.default,
            (g, x.detach(), mk.detach(), mode, "zeros", False, [0.0], [7, 9], True),
        )


# ---------------------------------------------------------------------------
# Gradients with respect to the matrices; deterministic backward.


@needs_kernels
class TestMatrixGradients:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    @pytest.mark.parametrize("align_corners", [False, True])
    def test_gradcheck(self, device, mode, padding_mode, align_corners):
        x = images_like(2, 2, 6, 7, dtype=torch.float64, device=device).requires_grad_()
        m = random_matrices(2, 6, 7, seed=4, strength=0.3, dtype=torch.float64).to(device)
        m = m.requires_grad_()
        kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)

        def f(x, m):
            return invfast.affine_warp(x, m, fill=[0.7, -0.2], size=(5, 8), **kw)

        assert torch.autograd.gradcheck(f, (x, m), eps=1e-6, atol=1e-6)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
    def test_gradcheck_views(self, device, mode):
        x = images_like(2, 2, 6, 7, dtype=torch.float64, device=device).requires_grad_()
        m = torch.stack(
            [random_matrices(2, 6, 7, seed=s, strength=0.3, dtype=torch.float64) for s in (1, 2)]
        )
        m = m.to(device).requires_grad_()
        f = lambda x, m: invfast.affine_warp(x, m, mode=mode, padding_mode="border")  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, m), eps=1e-6, atol=1e-6)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_matches_reference_fp32(self, device, padding_mode):
        x = images_like(3, 3, 20, 17, device=device)
        m = random_matrices(3, 20, 17, seed=8).to(device).requires_grad_()
        g = images_like(3, 3, 15, 22, seed=1, device=device)
        kw = dict(padding_mode=padding_mode, size=(15, 22), fill=0.4)
        (got,) = torch.autograd.grad(invfast.affine_warp(x, m, **kw), m, g)
        mr = m.detach().double().requires_grad_()
        (expected,) = torch.autograd.grad(
            reference.affine_warp(x.double(), mr, **kw), mr, g.double()
        )
        assert_close(got, expected, 2e-3, 1e-3, "grad matrices")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_deterministic_backward_is_bitwise_repeatable(self, device, mode, padding_mode):
        x = images_like(3, 3, 19, 23, device=device).requires_grad_()
        m = torch.stack([random_matrices(3, 19, 23, seed=s) for s in (5, 6)]).to(device)
        m = m.requires_grad_()
        g = images_like(2 * 3, 3, 17, 21, seed=2, device=device).view(2, 3, 3, 17, 21)
        kw = dict(mode=mode, padding_mode=padding_mode, size=(17, 21), fill=0.3)
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            runs = [
                torch.autograd.grad(invfast.affine_warp(x, m, **kw), (x, m), g) for _ in range(2)
            ]
        finally:
            torch.use_deterministic_algorithms(previous)
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
        xr = x.detach().double().requires_grad_()
        (expected,) = torch.autograd.grad(
            reference.affine_warp(xr, m.detach().double(), **kw), xr, g.double()
        )
        assert_close(runs[0][0], expected, 1e-4, 1e-4, "deterministic grad images")


# ---------------------------------------------------------------------------
# Keypoints land where the warp moves their pixels.


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_keypoints_follow_the_warp(device):
    B, H, W = 16, 31, 37
    g = torch.Generator().manual_seed(3)
    pts = torch.stack(
        [torch.randint(8, W - 8, (B,), generator=g), torch.randint(8, H - 8, (B,), generator=g)], -1
    )
    x = torch.zeros(B, 1, H, W, device=device)
    x[torch.arange(B), 0, pts[:, 1], pts[:, 0]] = 1.0
    aug = invfast.RandomAffine(
        degrees=180, translate=(0.1, 0.1), scale=(1.0, 1.3), shear=5, hflip=0.5, vflip=0.5, seed=1
    )
    views, m = aug(x, return_matrices=True)
    moved = geometry.transform_points(m, pts[:, None].double().to(device))[:, 0]
    # The output pixel nearest the moved point reads the bright pixel, and it
    # is the brightest one or next to it.
    q = moved.round().long()
    assert (views[torch.arange(B), 0, q[:, 1], q[:, 0]] > 0).all()
    peak = views.flatten(1).argmax(1)
    got = torch.stack([peak % W, peak // W], -1).double()
    assert ((got - moved).abs() <= 1.0).all(), (got, moved)
