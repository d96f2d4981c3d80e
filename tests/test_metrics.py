import pytest
import torch
from conftest import DEVICES
from torch import nn

import invfast.metrics
from invfast.metrics import KINDS, invariance_sweep, transform_matrices

IDENTITY = {"rotation": 0.0, "translation": 0.0, "scale": 1.0, "shear": 0.0, "hflip": False}


class Constant(nn.Module):
    """Logits that do not depend on the input, so exactly invariant to anything."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


class PooledPointwise(nn.Module):
    """Pointwise layers then a global mean: invariant to any permutation of pixels."""

    def __init__(self, channels=3, classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 16, 1), nn.Tanh(), nn.Conv2d(16, classes, 1))

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


def small_cnn(channels=3, classes=5):
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(classes),
    )


def data(n=37, channels=3, size=12, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, size, size, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return images, labels


def clean_accuracy(model, images, labels):
    with torch.no_grad():
        return (model(images).argmax(1) == labels).double().mean().item()


@pytest.mark.parametrize("kind", KINDS)
def test_identity_value_gives_zero_kl_and_clean_accuracy(kind):
    torch.manual_seed(0)
    images, labels = data()
    model = small_cnn().eval()
    model(images[:1])  # materialise the lazy layer
    (point,) = invariance_sweep(model, images, labels, kind=kind, values=[IDENTITY[kind]])
    assert point.kl == 0.0
    assert point.accuracy == pytest.approx(clean_accuracy(model, images, labels), abs=1e-12)
    assert point.count == images.shape[0] and point.kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_constant_model_is_invariant_everywhere(kind):
    images, labels = data()
    model = Constant(torch.tensor([0.1, 2.0, -1.0, 0.5, 0.0]))
    points = invariance_sweep(model, images, labels, kind=kind)
    expected = (labels == 1).double().mean().item()
    assert len(points) == len(invfast.metrics.DEFAULT_VALUES[kind])
    for point in points:
        assert point.kl == 0.0
        assert point.accuracy == pytest.approx(expected)


@pytest.mark.parametrize("kind,values", [("rotation", [90.0, 180.0, -90.0]), ("hflip", [True])])
def test_permutation_invariant_model_under_pixel_permutations(kind, values):
    # On a square image, quarter turns and mirrors about the centre permute pixels.
    torch.manual_seed(1)
    images, labels = data()
    model = PooledPointwise()
    for point in invariance_sweep(model, images, labels, kind=kind, values=values):
        assert point.kl < 1e-9
        assert point.accuracy == pytest.approx(clean_accuracy(model, images, labels))


def test_matches_a_hand_computed_shift():
    # A shift by one pixel to the right is torch.roll with a zero first column.
    torch.manual_seed(2)
    images, labels = data(size=10)
    model = small_cnn().eval()
    (point,) = invariance_sweep(model, images, labels, kind="translation", values=[0.1])
    shifted = torch.roll(images, 1, dims=3)
    shifted[..., 0] = 0
    with torch.no_grad():
        lp = torch.log_softmax(model(images), 1)
        lq = torch.log_softmax(model(shifted), 1)
    kl = (lp.exp() * (lp - lq)).sum(1).mean().item()
    assert point.kl == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert point.accuracy == pytest.approx(clean_accuracy(model, shifted, labels))


def test_batches_do_not_change_the_result_and_state_is_restored():
    torch.manual_seed(3)
    images, labels = data(n=23)
    model = small_cnn()
    model(images[:1])
    model.train()
    whole = invariance_sweep(model, images, labels, kind="scale", batch_size=1000)
    assert model.training
    pieces = invariance_sweep(model, images, labels, kind="scale", batch_size=4)
    for a, b in zip(whole, pieces):
        assert a.accuracy == pytest.approx(b.accuracy)
        assert a.kl == pytest.approx(b.kl, rel=1e-5, abs=1e-9)


def test_translation_pair_and_warp_kwargs():
    m = transform_matrices("translation", (0.25, -0.5), 2, 8, 4)
    assert torch.equal(m[:, :, 2], torch.tensor([[1.0, -4.0], [1.0, -4.0]]))
    images, labels = data(n=4)
    points = invariance_sweep(
        Constant(torch.zeros(5)),
        images,
        labels,
        kind="translation",
        values=[(0.1, 0.1)],
        padding_mode="reflection",
    )
    assert points[0].kl == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_model_device(device):
    images, labels = data(n=9)
    model = PooledPointwise().to(device)
    points = invariance_sweep(model, images, labels, kind="rotation", values=[0.0, 30.0])
    assert points[0].kl == 0.0 and points[1].kl >= 0.0


def test_bad_arguments():
    images, labels = data(n=4)
    model = Constant(torch.zeros(5))
    with pytest.raises(ValueError, match="kind"):
        invariance_sweep(model, images, labels, kind="twirl")
    with pytest.raises(ValueError, match="scale"):
        invariance_sweep(model, images, labels, kind="scale", values=[0.0])
    with pytest.raises(ValueError, match="labels"):
        invariance_sweep(model, images, labels[:2])
    with pytest.raises(ValueError, match="batch_size"):
        invariance_sweep(model, images, labels, batch_size=0)
