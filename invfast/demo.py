"""The main job: per-sample random affine augmentation of real photographs.

Loads the colour photographs that ship inside scikit-image, builds a batch,
augments it with invfast's fused kernel and with the plain-PyTorch reference,
checks that both agree, times both against kornia, and writes a picture.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from . import _ops, reference
from .augment import RandomAffine
from .bench import runner
from .bench.augment import reference_step

# Colour photographs stored in scikit-image's package data (nothing is downloaded).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle",
)


def load_photos() -> list[torch.Tensor]:
    """The photographs as float tensors (3, H, W) in [0, 1]."""
    from skimage import data

    photos = []
    for name in PHOTOS:
        if name == "motorcycle":
            img = data.stereo_motorcycle()[0]
        else:
            img = getattr(data, name)()
        photos.append(torch.from_numpy(img[..., :3].copy()).permute(2, 0, 1).float() / 255)
    return photos


def make_batch(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """A batch (B, 3, size, size) of random square crops of the photographs."""
    photos = load_photos()
    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(batch):
        img = photos[i % len(photos)]
        H, W = img.shape[1:]
        side = int(min(H, W) * (0.6 + 0.4 * torch.rand((), generator=g).item()))
        y = int(torch.randint(0, H - side + 1, (), generator=g))
        x = int(torch.randint(0, W - side + 1, (), generator=g))
        crop = img[None, :, y : y + side, x : x + side]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(crops).clamp_(0, 1).contiguous()


def save_grid(path: str, rows: list[torch.Tensor], labels: list[str]) -> None:
    """Writes rows of images (N, 3, H, W) in [0, 1] as one PNG, a label above each row."""
    from PIL import Image, ImageDraw

    n, _, h, w = rows[0].shape
    pad, label_h = 4, 14
    canvas = Image.new("RGB", (n * (w + pad) + pad, len(rows) * (h + pad + label_h) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row, label) in enumerate(zip(rows, labels)):
        top = pad + r * (h + pad + label_h)
        draw.text((pad, top), label, fill="black")
        pixels = (row.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for i in range(n):
            canvas.paste(Image.fromarray(pixels[i]), (pad + i * (w + pad), top + label_h))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    info = _ops.backend_info()
    start = time.perf_counter()
    images = make_batch(args.batch, args.size)
    print(
        f"invfast {info['version']} (kernels: cpu={info['cpu_kernels']}, "
        f"cuda={info['cuda_kernels']}, backend={info['backend']}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"batch: {args.batch} crops of {len(PHOTOS)} scikit-image photographs, "
        f"{tuple(images.shape[1:])}, float32 ({time.perf_counter() - start:.1f} s to load)"
    )

    aug = RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=10, hflip=0.5)
    g = torch.Generator().manual_seed(args.seed)
    views, matrices = aug(images, generator=g, return_matrices=True)
    expected = reference.affine_warp(images, matrices)
    max_diff = (views - expected).abs().max().item()
    exact = reference.affine_warp(images.double(), matrices.double())
    max_diff64 = (views.double() - exact).abs().max().item()
    print(
        f"largest |fused - reference| over the batch: {max_diff:.2e} "
        f"(against the reference in float64: {max_diff64:.2e})"
    )

    providers = {
        "invfast RandomAffine (fused kernel)": lambda: aug(images),
        "reference (affine_grid + grid_sample)": lambda: reference_step(aug, images),
    }
    try:
        import kornia.augmentation as K

        kornia_aug = torch.nn.Sequential(
            K.RandomHorizontalFlip(p=0.5),
            K.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=10, p=1.0),
        )
        providers["kornia RandomHorizontalFlip + RandomAffine"] = lambda: kornia_aug(images)
    except ImportError:
        print("kornia is not installed; its row is left out")

    # The providers take turns, so that a drift of the machine's speed slows them alike.
    with torch.no_grad():
        timed = runner.time_providers(list(providers.values()), "cpu", args.min_time)
    times = {}
    for name, t in zip(providers, timed):
        if isinstance(t, BaseException):
            raise t
        times[name] = float(torch.tensor(t).median())
    fused = times["invfast RandomAffine (fused kernel)"]
    print()
    print(f"| provider (B={args.batch}, 3x{args.size}x{args.size}) | ms | images/s | invfast is |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in times.items():
        ratio = "-" if t is fused else f"{t / fused:.1f}x faster"
        print(f"| {name} | {t * 1e3:.1f} | {args.batch / t:,.0f} | {ratio} |")

    more = [aug(images[:8], generator=g) for _ in range(2)]
    save_grid(
        args.out,
        [images[:8], views[:8], *more],
        ["original", "view 1", "view 2", "view 3"],
    )
    print(f"\nwrote {args.out}: originals on top, three random views of each below")
    return {"max_diff": max_diff, "max_diff_fp64": max_diff64, "seconds": times}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--size", type=int, default=224, help="image side (default 224)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-time", type=float, default=1.0, help="seconds of timing per provider (default 1)"
    )
    parser.add_argument("--out", default="outputs/demo.png", help="where to write the picture")
