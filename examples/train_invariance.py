"""Does invfast's augmentation make a small CNN robust to rotations, shifts and zooms?

Trains the same small CNN three times on scikit-learn's handwritten digits
(1797 real 8x8 scans, shipped inside scikit-learn, upsampled to 24x24 and
padded to 32x32), with the same seed, epochs and steps:

  none         plain cross-entropy on the clean images;
  augment      cross-entropy on views from invfast.RandomAffine;
  augment+KL   the same, plus a consistency term: a second random view of
               every image, and the KL divergence from the (detached)
               prediction on the first view to the prediction on the second
               (invfast.losses.kl_consistency). It costs a second forward and
               backward pass per step: the runs share epochs and steps, not FLOPs.

Then it evaluates each on the clean test set and on test sets rotated,
shifted and zoomed by fixed amounts (invfast.metrics.invariance_sweep), prints
a markdown table and saves a plot of accuracy against rotation angle.

    python examples/train_invariance.py                 # 20 epochs: ~5 min of CPU time
    python examples/train_invariance.py --quick         # a few seconds, for tests

Limitation: measured on 2 shared cores only (5.5 min of CPU time, 10 min of
wall time while other builds ran); one seed, so differences of a point or
two between runs are within noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import invfast
from invfast.metrics import invariance_sweep

try:
    from invfast.losses import kl_consistency
except ImportError:  # an invfast without the fused losses: the same KL in plain PyTorch
    kl_consistency = None

RUNS = ("none", "augment", "augment+KL")
SWEEP_ANGLES = tuple(range(-90, 91, 15))


def load_digits(size: int = 32, digit_size: int = 24):
    """scikit-learn's digits as float32 ``(N, 1, size, size)`` in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(digit_size, digit_size), mode="bilinear")
    pad = (size - digit_size) // 2
    images = F.pad(images.clamp(0, 1), (pad, size - digit_size - pad) * 2)
    return images.contiguous(), torch.tensor(digits.target, dtype=torch.int64)


def split(images, labels, test_fraction: float, seed: int):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


def make_model(classes: int = 10) -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 8),
        nn.MaxPool2d(2),
        *block(8, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def consistency(student_logits, teacher_logits, teacher_temperature):
    """KL(sharpened teacher || student), batch mean, no gradient into the teacher."""
    if kl_consistency is not None:
        return kl_consistency(
            student_logits, teacher_logits, teacher_temperature=teacher_temperature
        )
    log_p = torch.log_softmax(teacher_logits.detach().float() / teacher_temperature, dim=1)
    log_q = torch.log_softmax(student_logits.float(), dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


class Progress:
    """tqdm when it is installed, a plain line per update otherwise."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, ncols=90, leave=True, file=sys.stderr)
        except ImportError:
            self.bar = None
        self.total, self.done, self.desc = total, 0, desc

    def update(self, postfix: str):
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update()
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            print(f"{self.desc}: {self.done}/{self.total} {postfix}", file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(run: str, train_set, args) -> nn.Module:
    images, labels = train_set
    torch.manual_seed(args.seed)  # the same initial weights and batch order for every run
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = (len(labels) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
    )
    augment = invfast.RandomAffine(
        degrees=args.degrees, translate=(0.12, 0.12), scale=(0.8, 1.2), hflip=0.0
    )
    # Augmentation draws from its own generator so that every run sees the same batches.
    views_rng = torch.Generator().manual_seed(args.seed + 1)
    order_rng = torch.Generator().manual_seed(args.seed + 2)
    progress = Progress(args.epochs * steps_per_epoch, f"{run:>10}")
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(labels), generator=order_rng)
        for start in range(0, len(labels), args.batch_size):
            idx = order[start : start + args.batch_size]
            x, y = images[idx], labels[idx]
            if run == "none":
                loss = F.cross_entropy(model(x), y)
                extra = 0.0
            elif run == "augment":
                loss = F.cross_entropy(model(augment(x, generator=views_rng)), y)
                extra = 0.0
            else:
                # Two independent views of every image in one forward pass (one
                # batch for batch norm). The first gets the same cross-entropy as
                # in "augment" and is the (detached) teacher of the second.
                views = augment(torch.cat([x, x]), generator=views_rng)
                teacher_logits, student_logits = model(views).chunk(2)
                kl = consistency(student_logits, teacher_logits, args.teacher_temperature)
                loss = F.cross_entropy(teacher_logits, y) + args.kl_weight * kl
                extra = kl.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update(f"loss {loss.item():.3f}" + (f" kl {extra:.3f}" if extra else ""))
    progress.close()
    return model.eval()


def evaluate(model, test_set, args):
    images, labels = test_set
    points = {}

    def sweep(kind, values):
        for p in invariance_sweep(model, images, labels, kind=kind, values=values):
            points[(kind, p.value)] = p

    sweep("rotation", SWEEP_ANGLES)
    sweep("translation", [(-0.15, 0.0), (0.15, 0.0), (0.0, -0.15), (0.0, 0.15)])
    sweep("scale", [0.75, 1.25])
    return points


def table(results) -> str:
    def acc(points, kind, values):
        return 100 * sum(points[(kind, v)].accuracy for v in values) / len(values)

    columns = [
        ("clean", lambda p: acc(p, "rotation", [0])),
        ("rot ±15°", lambda p: acc(p, "rotation", [-15, 15])),
        ("rot ±30°", lambda p: acc(p, "rotation", [-30, 30])),
        ("rot ±45°", lambda p: acc(p, "rotation", [-45, 45])),
        ("rot ±90°", lambda p: acc(p, "rotation", [-90, 90])),
        (
            "shift 15%",
            lambda p: acc(p, "translation", [(-0.15, 0.0), (0.15, 0.0), (0.0, -0.15), (0.0, 0.15)]),
        ),
        ("zoom 0.75", lambda p: acc(p, "scale", [0.75])),
        ("zoom 1.25", lambda p: acc(p, "scale", [1.25])),
    ]
    head = "| run | " + " | ".join(name for name, _ in columns) + " | KL rot ±30° |"
    rule = "|" + "---|" * (len(columns) + 2)
    lines = [head, rule]
    for run, points in results.items():
        kl = sum(points[("rotation", v)].kl for v in (-30, 30)) / 2
        cells = " | ".join(f"{fn(points):.1f}" for _, fn in columns)
        lines.append(f"| {run} | {cells} | {kl:.3f} |")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, points in results.items():
        ax.plot(
            SWEEP_ANGLES,
            [100 * points[("rotation", a)].accuracy for a in SWEEP_ANGLES],
            marker="o",
            label=run,
        )
    ax.set_xlabel("rotation of the test images (degrees)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits: accuracy against rotation")
    ax.set_xticks(SWEEP_ANGLES[::2])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--degrees", type=float, default=40.0, help="training rotation range")
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument(
        "--teacher-temperature", type=float, default=1.0, help="below 1 sharpens the teacher"
    )
    parser.add_argument("--runs", default=",".join(RUNS), help="which of the three runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="outputs", help="folder for the plot")
    parser.add_argument(
        "--quick", action="store_true", help="1 epoch on 256 images: checks that it runs"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images, labels = load_digits()
    train_set, test_set = split(images, labels, test_fraction=0.3, seed=args.seed)
    if args.quick:
        args.epochs = 1
        train_set = (train_set[0][:256], train_set[1][:256])
        test_set = (test_set[0][:128], test_set[1][:128])
    if kl_consistency is None:
        print("note: invfast.losses not available; the KL runs in plain PyTorch", file=sys.stderr)
    print(
        f"digits: {len(train_set[1])} train / {len(test_set[1])} test images 1x32x32; "
        f"{args.epochs} epochs of batch {args.batch_size}; seed {args.seed}; "
        f"{torch.get_num_threads()} threads; invfast {invfast.__version__}",
        file=sys.stderr,
    )

    results = {}
    started = time.perf_counter()
    for run in args.runs.split(","):
        if run not in RUNS:
            parser.error(f"--runs: unknown run {run!r}; choose from {', '.join(RUNS)}")
        model = train(run, train_set, args)
        results[run] = evaluate(model, test_set, args)
    elapsed = time.perf_counter() - started

    print(table(results))
    print(f"\naccuracy in %; {elapsed:.0f} s for three runs")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "train_invariance.png")
    plot(results, path)
    print(f"plot: {path}")
    return results


if __name__ == "__main__":
    main()
