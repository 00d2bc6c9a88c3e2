"""Inverse problems with the exact score: twisted SMC, replacement and measurement guidance against the posterior.

The 64-dimensional, 8-component mixture of `bench_schedulers.py` under VE noise (σ 0.01..50), seen as 1 × 8 × 8
images and driven through `ScoreInverseProblemPipeline` by its exact score (`ExactScoreUNet`), observed two ways:
the top half of the coordinates with σ_y = 0 (a `MaskOperator`), only 1 coordinate (so that the posterior keeps
several components) and a random 16 × 64 matrix with σ_y = 0.05 (`MatrixOperator`). Each seed draws a new x₀ from p₀, its measurement y, and `--num_samples` posterior draws from
each method, compared with as many draws of the closed-form posterior (`GaussianMixturePosterior`): sliced W2 and
the total variation between the two sets' component histograms (components assigned by p₀'s `classify`). The floor
row compares two independent sets of exact posterior draws. Every figure is a mean over `--seeds` ± its standard
error; NFE is model evaluations per image (particles × steps for SMC). Replacement and guidance run at the NFE of
SMC's default (16 particles × 50 steps), replacement on score_sde's PC (the reference inpainter), guidance on the
default VE sampler (`SDEDPMSolverScheduler`).

Run from the repository root: `python benchmarks/bench_inverse.py` (~15 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch

from score_diffusers import (
    MaskOperator,
    MatrixOperator,
    PredictorCorrectorScheduler,
    ScoreInverseProblemPipeline,
    SDEDPMSolverScheduler,
)
from score_diffusers.testing import ExactScoreUNet, GaussianMixture, GaussianMixturePosterior, mode_weights
from score_diffusers.testing import sliced_wasserstein

try:
    from machine import machine_description
except ImportError:
    from benchmarks.machine import machine_description

DIM, COMPONENTS = 64, 8
IMAGE_SHAPE = (1, 8, 8)
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0
MATRIX_ROWS, MATRIX_NOISE_STD = 16, 0.05
FEW_OBSERVED = 1
SMC_STEPS = 50
PARTICLE_COUNTS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_PARTICLES = 16


@dataclass
class Problem:
    name: str
    operator: object
    matrix: torch.Tensor
    noise_std: float


def problems() -> list[Problem]:
    half = torch.zeros(1, *IMAGE_SHAPE)
    half[..., : IMAGE_SHAPE[1] // 2, :] = 1
    few = torch.zeros(1, *IMAGE_SHAPE)
    few[..., 0, :FEW_OBSERVED] = 1
    matrix = torch.randn(MATRIX_ROWS, DIM, generator=torch.Generator().manual_seed(1)) / math.sqrt(DIM)
    return [
        Problem("mask, half observed, σ_y = 0", MaskOperator(half), torch.eye(DIM)[half.flatten() > 0], 0.0),
        Problem(f"mask, {FEW_OBSERVED} coordinates observed (a multimodal posterior), σ_y = 0", MaskOperator(few),
                torch.eye(DIM)[few.flatten() > 0], 0.0),
        Problem(f"random {MATRIX_ROWS} × {DIM}, σ_y = {MATRIX_NOISE_STD:g}",
                MatrixOperator(matrix, IMAGE_SHAPE), matrix, MATRIX_NOISE_STD),
    ]


def measure(problem: Problem, mixture: GaussianMixture, seed: int) -> tuple[torch.Tensor, GaussianMixturePosterior]:
    """A fresh x₀ ~ p₀, its measurement y (shape of the operator's output for one image) and the posterior."""
    generator = torch.Generator().manual_seed(1000 + seed)
    x0, _ = mixture.sample(1, generator)
    flat_y = problem.matrix.double() @ x0[0]
    flat_y = flat_y + problem.noise_std * torch.randn(flat_y.shape, generator=generator, dtype=torch.float64)
    posterior = GaussianMixturePosterior(mixture, problem.matrix, flat_y, problem.noise_std)
    if isinstance(problem.operator, MaskOperator):  # σ_y = 0: the kept pixels, in image shape
        return problem.operator.forward(x0.reshape(1, *IMAGE_SHAPE).float()), posterior
    return flat_y.float()[None], posterior


def figures(mixture: GaussianMixture, samples: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    samples, reference = samples.reshape(len(samples), -1).double(), reference.reshape(len(reference), -1).double()
    w2 = sliced_wasserstein(samples, reference, generator=torch.Generator().manual_seed(0))
    tv = float(0.5 * (mode_weights(mixture, samples) - mode_weights(mixture, reference)).abs().sum())
    return w2, tv


def mean_se(values: list[float]) -> str:
    tensor = torch.tensor(values, dtype=torch.float64)
    se = float(tensor.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return f"{float(tensor.mean()):.3f} ± {se:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--particles", type=int, nargs="+", default=list(PARTICLE_COUNTS),
                        help="particle counts of the SMC rows")
    parser.add_argument("--steps", type=int, default=SMC_STEPS, help="steps of the SMC chain")
    parser.add_argument("--skip_baselines", action="store_true", help="only the floor and the SMC rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_description())
    mixture = GaussianMixture.random(COMPONENTS, DIM, generator=torch.Generator().manual_seed(0))
    smc_scheduler = SDEDPMSolverScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    pc = PredictorCorrectorScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)

    def pipeline(scheduler) -> ScoreInverseProblemPipeline:
        pipe = ScoreInverseProblemPipeline(unet=ExactScoreUNet(mixture, scheduler, IMAGE_SHAPE), scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    default_nfe = DEFAULT_PARTICLES * SMC_STEPS
    rows: list[tuple[str, str, int]] = [("floor (two exact posterior sets)", "", 0)]
    rows += [(f"smc, {n} particles × {args.steps} steps", "smc", n) for n in args.particles]
    if not args.skip_baselines:
        rows += [(f"replacement, PC, {default_nfe} evaluations", "replacement", default_nfe),
                 (f"guidance, SDE-DPM-Solver++, {default_nfe} evaluations", "guidance", default_nfe)]
    for problem in problems():
        results: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _, _ in rows}
        nfes: dict[str, int] = {}
        for seed in range(args.seeds):
            y, posterior = measure(problem, mixture, seed)
            reference = posterior.sample(args.num_samples, torch.Generator().manual_seed(seed))[0]
            measurement = y.expand(args.num_samples, *y.shape[1:]).contiguous()
            for label, method, count in rows:
                start = time.perf_counter()
                generator = torch.Generator().manual_seed(10_000 + seed)
                if method == "":
                    samples = posterior.sample(args.num_samples, generator)[0]
                    nfe = 0
                elif method == "smc":
                    out = pipeline(smc_scheduler)(measurement, problem.operator, problem.noise_std, "smc",
                                                  args.steps, num_particles=count, generator=generator,
                                                  output_type="latent", particle_batch_size=count * args.num_samples)
                    samples, nfe = out.images, out.nfe
                else:
                    scheduler = pc if method == "replacement" else smc_scheduler
                    steps = count // scheduler.order
                    out = pipeline(scheduler)(measurement, problem.operator, problem.noise_std, method, steps,
                                              generator=generator, output_type="latent")
                    samples, nfe = out.images, out.nfe
                w2, tv = figures(mixture, samples, reference)
                results[label].append((w2, tv, time.perf_counter() - start))
                nfes[label] = nfe
        print(f"\n### {problem.name}: {args.num_samples} posterior draws per seed, {args.seeds} seeds\n")
        print("| method | NFE per image | sliced W2 | mode TV | seconds per seed |")
        print("|---|---:|---:|---:|---:|")
        for label, _, _ in rows:
            values = results[label]
            print(f"| {label} | {nfes[label]} | {mean_se([v[0] for v in values])} | "
                  f"{mean_se([v[1] for v in values])} | {sum(v[2] for v in values) / len(values):.1f} |")


if __name__ == "__main__":
    main()
