"""Held-out bits/dim of the digits under each dequantisation convention, and pixel-shuffled digits beside them.

A DDPM trained on the digits' train split only (`digits_ddpm.py --split train`, cached) scores test-split digits
(16 × 16, 8-bit, [−1, 1]) through `dequantized_log_likelihood`: uniform dequantisation (score_sde's), the
truncated normal (i-DODE's training-free choice), and their importance-weighted K-draw bounds. The same digits with
their pixels shuffled are scored by the same conventions. Hutchinson divergence (1 Rademacher probe), dopri5 at rtol =
atol = 1e-5 in float64 by default (`--rtol`, `--dtype`; `--method ab4` for the fixed log-σ̄ grid); mean ± standard error
over the images; NFE is the right-hand-side evaluations of the batched solve (K × images rows); seconds are wall time on
the machine of the line printed first.

Run from the repository root: `python benchmarks/bench_dequantization.py` (`--num_images`, `--draws` to change the
work; `--num_images 4 --rtol 1e-4 --dtype float32 --threads 1` took 18 min beside other work on 2 CPU cores once the
DDPM was cached).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from score_diffusers import dequantized_log_likelihood
from score_diffusers.conventions import ModelConvention
from score_diffusers.datasets import load_digits_images

try:
    from digits_ddpm import TRAIN_SPLIT_OUTPUT_DIR, get_digits_ddpm
    from machine import machine_description
except ImportError:
    from benchmarks.digits_ddpm import TRAIN_SPLIT_OUTPUT_DIR, get_digits_ddpm
    from benchmarks.machine import machine_description

RESOLUTION = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--draws", type=int, nargs="+", default=[1, 10, 50], help="K of the importance-weighted rows")
    parser.add_argument("--batch_size", type=int, default=256, help="rows per ODE solve")
    parser.add_argument("--method", choices=("dopri5", "ab4"), default="dopri5",
                        help="ODE solver: adaptive dopri5 (takes --rtol) or the fixed-grid ab4 on its default grid")
    parser.add_argument("--rtol", type=float, default=1e-5, help="rtol = atol of dopri5")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="dtype of the solve")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (at most the free cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_description())
    ddpm = get_digits_ddpm(TRAIN_SPLIT_OUTPUT_DIR, split="train")
    convention = ModelConvention.from_config(ddpm.scheduler.config)
    test_images, _ = load_digits_images(RESOLUTION, split="test")
    real = test_images[: args.num_images]
    permutation = torch.randperm(real[0].numel(), generator=torch.Generator().manual_seed(0))
    shuffled = real.flatten(1)[:, permutation].reshape(real.shape)

    print(f"\n### Bits/dim of {len(real)} held-out test digits (DDPM of the train split), 8-bit scale\n")
    print("| dequantisation | K | real digits | shuffled pixels | NFE | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in ("uniform", "truncated_normal"):
        for draws in args.draws:
            figures, nfe, start, name = [], 0, time.perf_counter(), ""
            for images in (real, shuffled):
                generators = [torch.Generator().manual_seed(i) for i in range(len(images))]
                result = dequantized_log_likelihood(
                    ddpm.unet, convention, images, data_range=(-1.0, 1.0), dequantization=kind, num_samples=draws,
                    generator=generators, batch_size=args.batch_size, dtype=getattr(torch, args.dtype),
                    method=args.method, show_progress=False,
                    **({"rtol": args.rtol, "atol": args.rtol} if args.method == "dopri5" else {}))
                bits = result.bits_per_dim.double()
                figures.append(f"{float(bits.mean()):.3f} ± {float(bits.std() / math.sqrt(len(bits))):.3f}")
                nfe += result.nfe
                name = result.dequantization
            print(f"| {name} | {draws} | {figures[0]} | {figures[1]} | {nfe} | {time.perf_counter() - start:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
