"""RandomAffine's counter-based generator, fixed angles, flips and resized crops."""

import math

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
