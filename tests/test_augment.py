"""RandomAffine's counter-based generator, fixed angles, flips and resized crops."""

import contextlib
import math
import warnings

import pytest
import torch
from conftest import DEVICES, assert_close

import invfast
from invfast import _ops
from invfast.augment import counter_uniform

needs_kernels = pytest.mark.skipif(
    not _ops.has_kernel("affine_warp", "cpu"), reason="compiled kernels not loaded"
)


def images(B, seed=0, device="cpu", H=20, W=24):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, H, W, generator=g).to(device)


class TestCounterGenerator:
    def test_uniform_and_keyed(self):
        ids = torch.arange(20000)
        u = counter_uniform(7, 3, ids, 4)
        assert u.shape == (20000, 4) and u.dtype == torch.float64
        assert u.min() >= 0 and u.max() < 1
        assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
        # Columns and keys are decorrelated.
        assert abs(torch.corrcoef(u.T)[0, 1].item()) < 0.03
        assert not torch.equal(u, counter_uniform(8, 3, ids, 4))
        assert not torch.equal(u, counter_uniform(7, 4, ids, 4))
        # A sample's numbers do not depend on its batch.
        assert torch.equal(counter_uniform(7, 3, ids[5:6], 4), u[5:6])

    def test_tensor_seed_and_step_match_ints(self):
        ids = torch.tensor([0, 5, 2**40, -3])
        a = counter_uniform(11, 9, ids, 3)
        b = counter_uniform(torch.tensor(11), torch.tensor(9), ids, 3)
        assert torch.equal(a, b)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
    def test_same_numbers_on_cuda(self):
        ids = torch.arange(1000)
        assert torch.equal(
            counter_uniform(3, 1, ids.cuda(), 5).cpu(), counter_uniform(3, 1, ids, 5)
        )


@needs_kernels
class TestSeededRandomAffine:
    @pytest.mark.parametrize("device", DEVICES)
    def test_same_views_at_any_batch_size(self, device):
        x = images(64, device=device)
        aug = invfast.RandomAffine(
            30, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10, vflip=0.5, seed=123
        )
        full, m = aug(x, return_matrices=True, step=5)
        for B in (1, 7, 64):
            ids = torch.arange(64 - B, 64, device=device)
            part, mp = aug(x[64 - B :], return_matrices=True, step=5, sample_ids=ids)
            assert torch.equal(mp, m[64 - B :]), B
            assert torch.equal(part, full[64 - B :]), B
        # Another step, another seed (another DDP rank): other views.
        assert not torch.equal(aug(x, step=6), full)
        other = invfast.RandomAffine(30, translate=(0.1, 0.1), seed=124)
        assert not torch.equal(other(x, step=5), full)

    @pytest.mark.parametrize("device", DEVICES)
    def test_step_tensor_and_same_on_batch(self, device):
        x = images(6, device=device)
        aug = invfast.RandomAffine(45, seed=0)
        _, m = aug(x, return_matrices=True, step=3)
        _, mt = aug(x, return_matrices=True, step=torch.tensor(3, device=device))
        assert torch.equal(m, mt)
        same = invfast.RandomAffine(45, seed=0, same_on_batch=True)
        _, ms = same(x, return_matrices=True)
        assert torch.equal(ms, ms[:1].expand_as(ms))

    def test_same_on_batch_without_seed(self):
        aug = invfast.RandomAffine(45, same_on_batch=True)
        m = aug.sample_matrices(torch.zeros(5, 1, 8, 8), generator=torch.Generator().manual_seed(0))
        assert torch.equal(m, m[:1].expand_as(m))

    def test_bad_sample_ids(self):
        with pytest.raises(ValueError, match="sample_ids must be a tensor of shape \\(4,\\)"):
            invfast.RandomAffine(10, seed=0)(images(4), sample_ids=torch.arange(3))


@needs_kernels
class TestNewTransforms:
    def test_fixed_angles(self):
        aug = invfast.RandomAffine(angles=(0, 90, 180, 270), hflip=0.0, seed=1)
        m = aug.sample_matrices(torch.zeros(4000, 1, 9, 9)).double()
        angle = torch.rad2deg(torch.atan2(m[:, 0, 1], m[:, 0, 0])).round() % 360
        counts = torch.bincount((angle / 90).long(), minlength=4)
        assert set(angle.unique().tolist()) == {0.0, 90.0, 180.0, 270.0}
        assert (counts > 850).all()
        # Quarter turns of a square image are exact.
        x = images(8, H=9, W=9)
        views, m = aug(x, return_matrices=True)
        for view, img, mm in zip(views, x, m):
            k = round(math.degrees(math.atan2(mm[0, 1].item(), mm[0, 0].item())) / 90) % 4
            assert torch.equal(view, torch.rot90(img, k, dims=(1, 2)))

    def test_vertical_flip(self):
        x = images(5)
        assert torch.equal(invfast.RandomAffine(hflip=0.0, vflip=1.0)(x), x.flip(-2))
        both = invfast.RandomAffine(hflip=1.0, vflip=1.0, seed=0)
        assert torch.equal(both(x), x.flip(-1).flip(-2))

    @pytest.mark.parametrize("device", DEVICES)
    def test_out_buffer_is_reused(self, device):
        x = images(6, device=device)
        aug = invfast.RandomAffine(30, translate=(0.1, 0.1), scale=(0.8, 1.2), seed=4)
        buffer = torch.full_like(x, float("nan"))
        for step in range(2):
            got = aug(x, step=step, out=buffer)
            assert got.data_ptr() == buffer.data_ptr()
            assert torch.equal(got, aug(x, step=step))
        with pytest.raises(ValueError, match="out must have shape"):
            aug(x, out=torch.empty(6, 3, 20, 25, device=device))

    def test_p_zero_copies(self):
        x = (images(4) * 255).to(torch.uint8)
        aug = invfast.RandomAffine(45, p=0.0, seed=3)
        assert torch.equal(aug(x), x)

    def test_resized_crop(self):
        H, W = 40, 60
        aug = invfast.RandomAffine(
            hflip=0.0, crop_scale=(0.2, 0.6), crop_ratio=(0.5, 2.0), size=(16, 16), seed=2
        )
        x = images(3000, H=H, W=W)[:, :1]
        m = aug.sample_matrices(x).double()
        assert aug(x[:4]).shape == (4, 1, 16, 16)
        assert (m[:, 0, 1] == 0).all() and (m[:, 1, 0] == 0).all()
        w, h = 16 / m[:, 0, 0], 16 / m[:, 1, 1]
        area = w * h / (H * W)
        assert area.min() >= 0.2 - 1e-4 and area.max() <= 0.6 + 1e-4
        ratio = w / h
        assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 2.0 + 1e-4
        # The crop box lies inside the image: its corners map back inside.
        inv = invfast.geometry.invert(m)
        for u, v in ((-0.5, -0.5), (15.5, 15.5)):
            x_ = inv[:, 0, 0] * u + inv[:, 0, 1] * v + inv[:, 0, 2]
            y_ = inv[:, 1, 0] * u + inv[:, 1, 1] * v + inv[:, 1, 2]
            assert x_.min() >= -0.5 - 1e-4 and x_.max() <= W - 0.5 + 1e-4
            assert y_.min() >= -0.5 - 1e-4 and y_.max() <= H - 0.5 + 1e-4

    def test_full_crop_is_a_resize(self):
        x = images(2, H=8, W=8)
        aug = invfast.RandomAffine(hflip=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
        m = aug.sample_matrices(x)
        expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        assert_close(m, expected.expand(2, 2, 3), 1e-6, 0, "full crop")

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="angles"):
            invfast.RandomAffine(angles=[])
        with pytest.raises(ValueError, match="vflip"):
            invfast.RandomAffine(vflip=1.5)
        with pytest.raises(ValueError, match="crop_scale"):
            invfast.RandomAffine(crop_scale=(0.0, 1.0))
        with pytest.raises(ValueError, match="crop_ratio"):
            invfast.RandomAffine(crop_scale=(0.5, 1.0), crop_ratio=(0.0, 1.0))
        with pytest.raises(ValueError, match="seed"):
            invfast.RandomAffine(seed=1.5)


# ---------------------------------------------------------------------------
# The fused sampling ops against their plain-PyTorch reference.

needs_sampler = pytest.mark.skipif(
    not _ops.has_kernel("random_affine_matrices", "cpu"), reason="compiled kernels not loaded"
)


@contextlib.contextmanager
def reference_backend():
    _ops.set_backend("reference")
    try:
        yield
    finally:
        _ops.set_backend("auto")


# One module configuration per entry: every option on and off.
CONFIGS = {
    "defaults": {},
    "no_degrees": dict(degrees=None, hflip=0.0),
    "affine": dict(degrees=30, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=10, hflip=0.5),
    "zero_ranges": dict(degrees=0.0, translate=(0.0, 0.0), scale=(1.0, 1.0), shear=0.0),
    "angles": dict(degrees=(-10, 45), angles=(0, 90, 180, 270), vflip=0.5),
    "one_angle": dict(angles=(45,), hflip=1.0),
    "many_angles": dict(angles=tuple(range(0, 360, 3)), hflip=0.0),
    "shear4": dict(shear=(-5, 10, -20, 3), scale=(0.5, 2.0)),
    "p": dict(degrees=90, translate=(0.2, 0.3), shear=5, vflip=0.5, p=0.3),
    "p_zero": dict(degrees=90, p=0.0),
    "flips": dict(hflip=1.0, vflip=1.0),
    "crop_resize": dict(crop_scale=(0.08, 1.0), size=(16, 24)),
    "crop_everything": dict(
        degrees=20,
        angles=(0, 180),
        translate=(0.1, 0.05),
        scale=(0.9, 1.1),
        shear=(-3, 3, -4, 4),
        vflip=0.5,
        p=0.7,
        crop_scale=(0.2, 0.9),
        crop_ratio=(0.5, 2.0),
        size=(11, 9),
    ),
    "crop_full": dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0),
    "crop_clamped": dict(crop_scale=(0.9, 1.0), crop_ratio=(0.2, 5.0)),
}


def assert_same_matrices(got, expected, what):
    # float32 results of one double computation: the devices' trigonometry
    # may differ in the last bits of double, which float32 rounding hides but
    # for the rare value near a rounding boundary.
    assert got.dtype == expected.dtype == torch.float32, what
    assert got.device == expected.device, what
    assert_close(got[..., :2], expected[..., :2], 1e-6, 1e-6, f"{what}, linear part")
    assert_close(got[..., 2], expected[..., 2], 1e-5, 1e-6, f"{what}, translation")


def both_paths(aug, x, **kwargs):
    """The matrices of the kernels and of the reference, from the same uniforms."""
    generator = kwargs.pop("generator_seed", None)

    def run():
        g = None if generator is None else torch.Generator(x.device).manual_seed(generator)
        return aug.sample_matrices(x, generator=g, **kwargs)

    got = run()
    with reference_backend():
        expected = run()
    return got, expected


@needs_sampler
class TestFusedSampler:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("seed", [None, 5])
    @pytest.mark.parametrize("same_on_batch", [False, True])
    @pytest.mark.parametrize("config", list(CONFIGS))
    def test_matrices_match_reference(self, device, seed, same_on_batch, config):
        kwargs = CONFIGS[config]
        aug = invfast.RandomAffine(**kwargs, seed=seed, same_on_batch=same_on_batch)
        for B, H, W in ((0, 13, 21), (1, 13, 21), (37, 13, 21), (300, 64, 33)):
            x = torch.empty(B, 1, H, W, device=device)
            with warnings.catch_warnings():
                # More angles than the CUDA kernel takes run the reference.
                warnings.simplefilter("ignore", RuntimeWarning)
                got, expected = both_paths(aug, x, generator_seed=B, step=B + 3)
            Ho, Wo = kwargs.get("size", (H, W))
            assert got.shape == (B, 2, 3)
            assert_same_matrices(got, expected, f"{config}, B={B}, {H}x{W} -> {Ho}x{Wo}")
            if same_on_batch and B > 1:
                assert torch.equal(got, got[:1].expand_as(got))

    @pytest.mark.parametrize("device", DEVICES)
    def test_sample_ids_and_tensor_step(self, device):
        aug = invfast.RandomAffine(**CONFIGS["crop_everything"], seed=2**40 + 1)
        x = torch.empty(50, 1, 30, 40, device=device)
        ids = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:50] - 300
        for step in (0, 7, torch.tensor(7, device=device), torch.tensor(2**62)):
            got, expected = both_paths(aug, x, sample_ids=ids.to(device), step=step)
            assert_same_matrices(got, expected, f"step {step}")
        # The counter path is keyed on the sample, not its place in the batch.
        part = aug.sample_matrices(x[10:20], sample_ids=ids[10:20].to(device), step=3)
        full = aug.sample_matrices(x, sample_ids=ids.to(device), step=3)
        assert torch.equal(part, full[10:20])

    @pytest.mark.parametrize("device", DEVICES)
    def test_counter_uniform_is_bit_identical(self, device):
        ids = torch.tensor([0, 1, 5, 2**40, -3, 2**63 - 1, -(2**63)], device=device)
        cases = [
            (0, 0),
            (7, 3),
            (2**64 + 7, 3),  # ints are taken modulo 2^64
            (-1, -(2**63)),
            (torch.tensor(11), 9),
            (11, torch.tensor(9, device=device)),
            (torch.tensor(11, device=device), torch.tensor(9, device=device)),
            (torch.tensor(11, dtype=torch.int32), torch.tensor([[9]], device=device)),
            (torch.tensor(-(2**63)), torch.tensor(2**63 - 1)),
        ]
        for seed, step in cases:
            for n in (0, 1, 14, 33):
                got = counter_uniform(seed, step, ids, n)
                with reference_backend():
                    expected = counter_uniform(seed, step, ids, n)
                assert got.shape == (7, n) and got.dtype == torch.float64
                assert got.device == ids.device
                assert torch.equal(got, expected), (seed, step, n)
        # Empty batches, strided ids and other integer dtypes.
        assert counter_uniform(1, 2, ids[:0], 14).shape == (0, 14)
        wide = torch.arange(40, device=device)
        assert torch.equal(counter_uniform(1, 2, wide[::3], 5), counter_uniform(1, 2, wide, 5)[::3])
        same = counter_uniform(1, 2, wide[:1].expand(6), 5)
        assert torch.equal(same, counter_uniform(1, 2, wide[:1], 5).expand(6, 5))
        assert torch.equal(counter_uniform(1, 2, wide.int(), 5), counter_uniform(1, 2, wide, 5))

    @pytest.mark.parametrize("device", DEVICES)
    def test_bad_seed_or_step(self, device):
        ids = torch.arange(4, device=device)
        bad = [
            ("seed", torch.tensor([1, 2]), 0),
            ("seed", torch.zeros(0, dtype=torch.int64), 0),
            ("step", 1, torch.tensor(2.0)),
            ("seed", 1.5, 0),
            ("step", 1, "3"),
        ]
        for name, seed, step in bad:
            with pytest.raises(ValueError, match=f"counter_uniform: {name} must be an int"):
                counter_uniform(seed, step, ids, 3)
            if name == "step":
                aug = invfast.RandomAffine(degrees=10, seed=1)
                with pytest.raises(ValueError, match="counter_uniform: step must be an int"):
                    aug(torch.rand(4, 1, 5, 5, device=device), step=step)

    @pytest.mark.parametrize("device", DEVICES)
    def test_ints_past_int64_with_a_tensor_key(self, device):
        # An int seed or step is taken modulo 2^64 also when the other one is a tensor.
        ids = torch.tensor([0, 3, -7, 2**40], device=device)
        for seed, step in (
            (2**63, torch.tensor(3)),
            (2**64 - 1, torch.tensor(-5, device=device)),
            (-(2**70) + 9, torch.tensor(0)),
            (torch.tensor(4), 2**64 + 12),
        ):
            got = counter_uniform(seed, step, ids, 14)
            with reference_backend():
                expected = counter_uniform(seed, step, ids, 14)
            assert torch.equal(got, expected), (seed, step)
            ints = [v.item() if isinstance(v, torch.Tensor) else v for v in (seed, step)]
            assert torch.equal(got, counter_uniform(*ints, ids, 14)), (seed, step)
        aug = invfast.RandomAffine(30, translate=(0.1, 0.1), seed=2**64 - 1)
        x = torch.empty(5, 1, 8, 8, device=device)
        got, expected = both_paths(aug, x, step=torch.tensor(2, device=device))
        assert_same_matrices(got, expected, "seed 2^64 - 1, tensor step")

    def test_per_sample_seeds_run_the_reference(self):
        # A seed tensor with one value per sample is outside what the op takes.
        ids = torch.arange(6)
        seeds = torch.arange(6) * 1000
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = counter_uniform(seeds, 4, ids, 3)
        with reference_backend():
            assert torch.equal(got, counter_uniform(seeds, 4, ids, 3))
        assert torch.equal(got[2], counter_uniform(2000, 4, ids[2:3], 3)[0])

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
    def test_same_bits_on_both_devices(self):
        ids = torch.arange(-500, 500)
        step = torch.tensor(12)
        got = counter_uniform(3, step.cuda(), ids.cuda(), 14)
        assert torch.equal(got.cpu(), counter_uniform(3, step, ids, 14))
        aug = invfast.RandomAffine(**CONFIGS["crop_everything"], seed=3)
        cpu = aug.sample_matrices(torch.empty(1000, 1, 20, 30), sample_ids=ids)
        cuda = aug.sample_matrices(
            torch.empty(1000, 1, 20, 30, device="cuda"), sample_ids=ids.cuda()
        )
        assert_same_matrices(cuda.cpu(), cpu, "CUDA against CPU")

    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck(self, device):
        ids = torch.arange(9, device=device) * 3 - 4
        for seed, step in (
            (torch.tensor(5), torch.tensor(2)),
            (torch.tensor(5, device=device), torch.tensor(-2, device=device)),
        ):
            torch.library.opcheck(torch.ops.invfast.counter_uniform, (ids, seed, step, 14))
        torch.library.opcheck(
            torch.ops.invfast.counter_uniform, (ids[:0], torch.tensor(1), torch.tensor(0), 3)
        )
        g = torch.Generator().manual_seed(0)
        u = torch.rand(9, 14, dtype=torch.float64, generator=g).to(device)
        params = [-30.0, 30.0, 0.1, 0.2, 0.8, 1.2, -5.0, 5.0, 0.0, 0.0, 0.5, 0.5, 0.8]
        for uniforms, angles, crop in (
            (u, [], []),
            (u, [0.0, 90.0], [0.1, 0.9, 0.75, 1.33]),
            (u[:1].expand(9, 14), [45.0], []),
            (u[:0], [], [0.5, 1.0, 1.0, 1.0]),
        ):
            torch.library.opcheck(
                torch.ops.invfast.random_affine_matrices,
                (uniforms, params, angles, crop, [17, 20, 12, 10]),
            )

    @pytest.mark.parametrize("device", DEVICES)
    def test_op_errors_name_the_argument(self, device):
        op = torch.ops.invfast
        ids = torch.arange(4, device=device)
        seed, step = torch.tensor(1), torch.tensor(2)
        bad_counter = [
            ((ids.double(), seed, step, 3), "sample_ids must be int64"),
            ((ids.view(2, 2), seed, step, 3), r"sample_ids must be \(B,\), got shape \[2, 2\]"),
            ((ids, torch.tensor([1, 2]), step, 3), "seed must hold a single value"),
            ((ids, seed, torch.tensor(2.0), 3), "step must be int64, got Float"),
            ((ids, seed, step, -1), "n must be non-negative, got -1"),
        ]
        for args, message in bad_counter:
            with pytest.raises(RuntimeError, match=f"counter_uniform: {message}"):
                op.counter_uniform(*args)
        u = torch.rand(4, 14, dtype=torch.float64, device=device)
        params = [0.0] * 13
        sizes = [8, 8, 8, 8]
        bad_matrices = [
            ((u.float(), params, [], [], sizes), "uniforms must be float64, got Float"),
            (
                (u[:, :13], params, [], [], sizes),
                r"uniforms must be \(B, 14\), got shape \[4, 13\]",
            ),
            ((u, params[:12], [], [], sizes), "params must hold 13 values"),
            ((u, params, [], [0.5, 1.0, 1.0], sizes), "crop must be empty or hold"),
            ((u, params, [], [], [8, 8, -1, 8]), "sizes must be four non-negative integers"),
        ]
        for args, message in bad_matrices:
            with pytest.raises(RuntimeError, match=f"random_affine_matrices: {message}"):
                op.random_affine_matrices(*args)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
    def test_cuda_key_on_another_device_is_refused(self):
        ids = torch.arange(4, device="cuda")
        with pytest.raises(RuntimeError, match="seed must be on the CPU or on sample_ids' device"):
            torch.ops.invfast.counter_uniform(
                ids.cpu(), torch.tensor(1, device="cuda"), torch.tensor(2), 3
            )
