"""Error of each probability-flow solver against the exact flow of a Gaussian, per number of model evaluations.

For p_0 = N(μ, s²I) the probability-flow ODE in x̄ = x/α, σ̄ = σ/α carries x̄_T to μ + (x̄_T − μ)·s/√(s² + σ̄_T²)
exactly, under VE and VP alike, so the max error over a batch is the solver's own. Rows: `ProbabilityFlowScheduler`
with Euler, Heun, DPM-Solver++(2M) and (3M) and UniPC (2M + UniC), on both of its log-σ̄ spacings; columns: model
evaluations.

Run from the repository root: `python benchmarks/bench_ode_solvers.py` (~1 min).
"""

from __future__ import annotations

import argparse

import torch

from score_diffusers import ProbabilityFlowScheduler
from score_diffusers.testing import ExactScoreModel, GaussianMixture, run_loop

try:
    from machine import machine_description
except ImportError:
    from benchmarks.machine import machine_description

MEAN, STD, DIM, BATCH = 1.5, 0.5, 4, 64
EVALUATIONS = (6, 10, 15, 20, 40, 80)
SDES = {"VE (σ 1e-4..50)": {"sigma_min": 1e-4}, "VP (linear β 0.1..20)": {"sde_type": "vp"}}


def max_error(solver: str, evaluations: int, spacing: str, sde_kwargs: dict) -> float:
    mixture = GaussianMixture(torch.full((1, DIM), MEAN, dtype=torch.float64), STD)
    scheduler = ProbabilityFlowScheduler(solver=solver, time_spacing=spacing, **sde_kwargs)
    # Heun takes 2n − 1 evaluations for n points.
    points = (evaluations + 1) // 2 if solver == "heun" else evaluations
    x_T = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = x_T * scheduler.init_noise_sigma
    final = run_loop(scheduler, ExactScoreModel(mixture, scheduler), x_T, points)
    alpha_T, sigma_T = scheduler.convention.coefficients(1.0)
    ratio_T = float(sigma_T / alpha_T)
    exact = MEAN + (x_T / float(alpha_T) - MEAN) * STD / (STD**2 + ratio_T**2) ** 0.5
    return float((final - exact).abs().max())


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print(machine_description())
    for sde_name, sde_kwargs in SDES.items():
        print()
        print(f"**{sde_name}**: max |x − x_exact| over {BATCH} samples of N({MEAN}, {STD}²I) in {DIM}-D")
        print()
        print("| solver | spacing | " + " | ".join(f"NFE {n}" for n in EVALUATIONS) + " |")
        print("|---|---|" + "---:|" * len(EVALUATIONS))
        for spacing in ("karras", "log_sigma"):
            for solver in ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"):
                errors = [max_error(solver, n, spacing, sde_kwargs) for n in EVALUATIONS]
                print(f"| {solver} | {spacing} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")


if __name__ == "__main__":
    main()
