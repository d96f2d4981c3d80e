"""Invariance training with DistributedDataParallel: invfast augmentation on every rank.

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --steps 50

Each rank trains on its own shard of scikit-learn's digits (see
train_invariance.py) and draws its random views from its own generator,
seeded with ``seed + rank``, so no two ranks see the same transforms of the
same step; DDP averages the gradients. The backend is NCCL when every rank has
a GPU and gloo otherwise (on one machine, through localhost). At the end
rank 0 checks and prints that the ranks drew different transforms and that
their parameters are still identical, and exits non-zero if not.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import invfast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_invariance import consistency, load_digits, make_model  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    args = parser.parse_args(argv)

    use_cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        torch.set_num_threads(args.threads)
        device = torch.device("cpu")

    # Every rank builds the same model (same seed); DDP also broadcasts rank 0's weights.
    torch.manual_seed(args.seed)
    model = DistributedDataParallel(make_model().to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    augment = invfast.RandomAffine(degrees=40, translate=(0.12, 0.12), scale=(0.8, 1.2), hflip=0)

    images, labels = load_digits()
    shard = torch.arange(rank, len(labels), world)  # rank r takes every world-th image
    images, labels = images[shard].to(device), labels[shard].to(device)
    # Views differ per rank: each rank's generator has its own seed.
    views_rng = torch.Generator(device=device).manual_seed(args.seed + 1 + rank)
    order_rng = torch.Generator().manual_seed(args.seed + 1000 + rank)

    first_matrices = None
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(labels), (args.batch_size,), generator=order_rng).to(device)
        x, y = images[idx], labels[idx]
        matrices = augment.sample_matrices(x, generator=views_rng)
        views = invfast.affine_warp(x, matrices)
        if first_matrices is None:
            first_matrices = matrices
        clean_logits, view_logits = model(torch.cat([x, views])).chunk(2)
        kl = consistency(view_logits, clean_logits, 1.0)
        loss = F.cross_entropy(view_logits, y) + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  kl {kl.item():.4f}", flush=True)

    # Checks: transforms differ across ranks, parameters agree.
    gathered = [torch.empty_like(first_matrices) for _ in range(world)]
    dist.all_gather(gathered, first_matrices.contiguous())
    distinct_views = all(not torch.equal(gathered[0], g) for g in gathered[1:])
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    in_sync = torch.equal(lo, hi)
    if rank == 0:
        print(
            f"world {world} ({dist.get_backend()}): ranks drew different views: {distinct_views}; "
            f"parameters in sync: {in_sync}",
            flush=True,
        )
    dist.destroy_process_group()
    return 0 if (distinct_views or world == 1) and in_sync else 1


if __name__ == "__main__":
    sys.exit(main())
