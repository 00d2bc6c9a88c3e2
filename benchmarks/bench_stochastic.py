"""Low-NFE sampling of VE models, on a centred mixture and on one whose mean is far from 0 against σ_max.

The 64-dimensional, 8-component mixture of `bench_schedulers.py`, driven by its exact score, twice: as it is
(‖mean‖ ≈ 3, σ_max = 50) and shifted by a vector of norm 28, as [0, 1] image data sit far from 0 (NCSN++ trains on
uncentred CIFAR-10, ‖mean‖ ≈ 28 at σ_max = 50), with σ_max set to the data's largest pairwise distance as the
training scripts do. The prior N(0, σ_max²I) then misses p_T's mean by 28. Rows: `SDEDPMSolverScheduler` with its
defaults (noise capped at a share `max_noise_refresh` = 0.4 a step, none below `s_tmin` = √(σ̄_ε·σ̄_T)), with a
constant η = 1 (`max_noise_refresh=1, s_tmin=0`, as k-diffusion's and Diffusers' SDE-DPM-Solver++, and this
package's defaults before), at `eta=0` (the probability-flow ODE after the prior-forgetting first step), each of the
two noise limits alone, without `forget_prior`, our PC and probability flow, Diffusers' `ScoreSdeVeScheduler`, and
Restart sampling (Xu et al., 2023, https://arxiv.org/abs/2306.14878) as a candidate, on paired seeds; each figure is
a mean over `--seeds` runs ± its standard error, as in `bench_schedulers.py`. `--mixture_seed` and `--mean_scale`
draw another mixture (then shifted the same way), to check the defaults on data they were not chosen on.

Run from the repository root: `python benchmarks/bench_stochastic.py` (~20 min on 2 idle CPU cores, and ~9 more for
the Restart rows); `--only Restart --only "(defaults)"` keeps the sampler rows whose name holds any of the strings
(the noise floor is always printed). Measured, 3 seeds × 50,000: Restart does not beat `SDEDPMSolverScheduler`'s
defaults at 20 or 50 evaluations on the log-density gap (0.14 and 0.017 against 0.010 and 0.002 on centred data, the
Heun chain's own error, which its passes shrink by about a quarter), nor at 20 on W2 and mode TV; at 50 its W2 and
mode TV are level with `eta=0`, and with the defaults on centred data only (behind them on uncentred data).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from score_diffusers import (
    ModelConvention, PredictorCorrectorScheduler, ProbabilityFlowScheduler, SDEDPMSolverScheduler,
)
from score_diffusers.conventions import karras_noise_levels
from score_diffusers.sampling import euler_step, heun_step, ode_derivative
from score_diffusers.testing import ExactScoreModel, GaussianMixture, noise, prior_sample, quality_report, run_sampler

try:
    from bench_schedulers import COMPONENTS, DIM, LOG_PROB_REFERENCE_SIZE, SIGMA_MIN, print_quality, sample_score_sde_ve
    from bench_schedulers import summarize
    from machine import machine_description
except ImportError:
    from benchmarks.bench_schedulers import (
        COMPONENTS, DIM, LOG_PROB_REFERENCE_SIZE, SIGMA_MIN, print_quality, sample_score_sde_ve, summarize,
    )
    from benchmarks.machine import machine_description

CENTRED_SIGMA_MAX = 50.0
# ‖mean‖ of the uncentred mixture, and the sample whose largest pairwise distance sets its σ_max.
UNCENTRED_MEAN_NORM = 28.0
PAIRWISE_SAMPLE = 2000

# ---- Restart sampling (Xu et al., 2023, https://arxiv.org/abs/2306.14878) -----------------------------------------

# Where Restart goes back up, transferred from the paper's EDM runs by position on the Karras grid. Its CIFAR-10
# interval [0.06, 0.30] (also the lowest of its ImageNet-64 intervals) is two points of EDM's 18-point ρ = 7 grid over
# [0.002, 80], indices 14 and 12 (0.0599, 0.2964): the fractions u = 14/17 and 12/17 of the way from σ_max^{1/ρ} to
# σ_min^{1/ρ}. The derived interval is the σ̄ at those fractions of the scheduler's own [σ_min, σ_max] (about
# [0.12, 0.41] for σ 0.01..50), so it depends on the scheduler's range only; its lower end then snaps to the nearest
# point of the main grid, as the paper's code does.
RESTART_GRID_FRACTIONS = (14 / 17, 12 / 17)
# Sensitivity only: ImageNet-64's top interval [19.35, 40.79], EDM grid points 4 and 2 (high noise, where mode weights
# are set), and the paper's [0.06, 0.30] scaled with σ_max (both ranges end near the data's diameter).
RESTART_HIGH_GRID_FRACTIONS = (4 / 17, 2 / 17)
EDM_SIGMA_MAX = 80.0
RESTART_INTERVAL_EDM = (0.06, 0.30)
# Each restart pass re-solves the interval on a 3-point ρ = 7 grid (2 Heun steps, 4 evaluations), as in all of the
# paper's CIFAR-10 runs; its 43-evaluation run spends 8 on restarts (K = 2) and 35 on the 18-point main grid, so K is
# the number of passes nearest to that share of the budget (at least one) and the main grid takes the rest.
RESTART_POINTS = 3
RESTART_SHARE = 8 / 43


def restart_plan(total_nfe: int) -> tuple[int, int]:
    """(n, K): points of the main grid and restart passes within `total_nfe` evaluations. The main chain costs 2n − 2:
    one evaluation for the prior-forgetting first step, two per Heun step, one for the last Euler step to σ̄ = 0."""
    pass_nfe = 2 * (RESTART_POINTS - 1)
    passes = max(1, round(RESTART_SHARE * total_nfe / pass_nfe))
    num_points = (total_nfe - passes * pass_nfe + 2) // 2
    if num_points < 2:
        raise ValueError(f"{total_nfe} evaluations leave no main grid beside {passes} restart passes.")
    return num_points, passes


def restart_sample(
    mixture: GaussianMixture,
    sigma_min: float,
    sigma_max: float,
    total_nfe: int,
    shape: tuple[int, ...],
    generator: torch.Generator,
    fractions: tuple[float, float] = RESTART_GRID_FRACTIONS,
    interval: tuple[float, float] | None = None,
    restart: bool = True,
) -> tuple[torch.Tensor, int]:
    """Restart sampling on the exact score: Heun's probability-flow ODE in x̄ = x/α, σ̄ on the Karras grid, with K
    passes back up from σ̄_lo to σ̄_hi, x̄ ← x̄ + √(σ̄_hi² − σ̄_lo²)·z, each re-solved by the ODE; the first step
    forgets the prior as `SDEDPMSolverScheduler` does. The interval is at `fractions` of the Karras grid, or `interval`
    (σ̄_lo, σ̄_hi) when given; `restart=False` runs the same main chain without the passes (K = 0).
    Returns the samples and the number of model evaluations, at most `total_nfe`."""
    scheduler = ProbabilityFlowScheduler(sde_type="ve", sigma_min=sigma_min, sigma_max=sigma_max)
    convention, model = scheduler.convention, ExactScoreModel(mixture, scheduler)
    num_points, passes = restart_plan(total_nfe)
    ratios = convention.sde.noise_to_signal(convention.time_grid(num_points, "karras")).tolist()
    if interval is None:
        interval = tuple(karras_noise_levels(u, ratios[0], ratios[-1]) for u in fractions)
    # The restart ends on the main grid point nearest σ̄_lo (never the first: the chain starts there).
    restart_at = 1 + min(range(num_points - 1), key=lambda j: abs(ratios[j + 1] - interval[0]))
    restart_ratios = [karras_noise_levels(j / (RESTART_POINTS - 1), interval[1], ratios[restart_at])
                      for j in range(RESTART_POINTS)]

    def denoise(scaled: torch.Tensor, ratio: float) -> torch.Tensor:
        t = convention.sde.time_from_noise_to_signal(torch.tensor(ratio, dtype=torch.float64))
        alpha, sigma = (float(c) for c in convention.coefficients(t))
        sample = scaled if alpha == 1 else scaled * alpha
        score = convention.score_from_output(model(sample, convention.timestep(t)), sigma)
        return ModelConvention.denoised(sample, score, alpha, sigma)

    def ode_step(scaled: torch.Tensor, ratio: float, next_ratio: float) -> torch.Tensor:
        # Euler step; 2nd-order correction unless it lands on the data.
        derivative = ode_derivative(scaled, denoise(scaled, ratio), ratio)
        predicted = euler_step(scaled, derivative, next_ratio - ratio)
        if next_ratio == 0:
            return predicted
        end_derivative = ode_derivative(predicted, denoise(predicted, next_ratio), next_ratio)
        return heun_step(scaled, derivative, end_derivative, next_ratio - ratio)

    # Forget the prior: x̄₁ = x̂₀(x_T) + σ̄₁·z.
    scaled = prior_sample(scheduler, shape, generator) / float(convention.sde.mean_coeff(torch.tensor(1.0)))
    scaled = denoise(scaled, ratios[0]).add_(noise(shape, generator), alpha=ratios[1])
    for i in range(1, num_points):
        if restart and i == restart_at and interval[1] > ratios[i]:
            # Restart: forward jump to σ̄_hi with fresh noise, then the ODE back down, K times.
            for _ in range(passes):
                scaled = scaled.add_(noise(shape, generator), alpha=math.sqrt(interval[1] ** 2 - ratios[i] ** 2))
                for ratio, next_ratio in zip(restart_ratios[:-1], restart_ratios[1:]):
                    scaled = ode_step(scaled, ratio, next_ratio)
        scaled = ode_step(scaled, ratios[i], ratios[i + 1] if i + 1 < num_points else 0.0)
    return scaled, model.calls


def mixtures(mixture_seed: int = 0, mean_scale: float = 3.0) -> dict[str, tuple[GaussianMixture, float]]:
    centred = GaussianMixture.random(
        COMPONENTS, DIM, mean_scale=mean_scale, generator=torch.Generator().manual_seed(mixture_seed)
    )
    shift = torch.randn(DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    uncentred = GaussianMixture(centred.means + shift / shift.norm() * UNCENTRED_MEAN_NORM, centred.stds, centred.weights)
    points, _ = uncentred.sample(PAIRWISE_SAMPLE, generator=torch.Generator().manual_seed(7))
    return {
        "centred": (centred, CENTRED_SIGMA_MAX),
        f"uncentred, ‖mean‖ {UNCENTRED_MEAN_NORM:g}": (uncentred, float(torch.cdist(points, points).max())),
    }


def benchmark_arguments(doc: str, only: bool = False) -> argparse.Namespace:
    """`--seeds` and `--num_samples` of the mixture benchmarks (and `--only` where asked); one intra-op thread;
    prints the machine line."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=50_000)
    parser.add_argument("--mixture_seed", type=int, default=0, help="seed of the random mixture (default 0)")
    parser.add_argument("--mean_scale", type=float, default=3.0, help="std of its component means (default 3.0)")
    if only:
        parser.add_argument("--only", action="append", metavar="SUBSTRING",
                            help="keep the sampler rows whose name holds this string (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_description())
    return args


def main() -> None:
    args = benchmark_arguments(__doc__, only=True)
    shape = (args.num_samples, DIM)
    rows = []
    for family, (mixture, sigma_max) in mixtures(args.mixture_seed, args.mean_scale).items():
        large_reference, _ = mixture.sample(LOG_PROB_REFERENCE_SIZE, generator=torch.Generator().manual_seed(5))
        kwargs = {"sigma_min": SIGMA_MIN, "sigma_max": sigma_max}

        def ours(make):
            def sample(steps, generator):
                scheduler = make()
                model = ExactScoreModel(mixture, scheduler)
                return run_sampler(scheduler, model, shape, steps, generator=generator), model.calls

            return sample

        def restart(**where):
            return lambda nfe, gen: restart_sample(mixture, SIGMA_MIN, sigma_max, nfe, shape, gen, **where)

        samplers = [
            ("SDE-DPM-Solver++(2M) (defaults)", ours(lambda: SDEDPMSolverScheduler(**kwargs)), [10, 20, 50]),
            ("SDE-DPM-Solver++(2M), eta=0 (the ODE, prior forgotten)",
             ours(lambda: SDEDPMSolverScheduler(eta=0.0, **kwargs)), [10, 20, 50]),
            ("SDE-DPM-Solver++(2M), constant eta=1 (max_noise_refresh=1, s_tmin=0)",
             ours(lambda: SDEDPMSolverScheduler(max_noise_refresh=1.0, s_tmin=0.0, **kwargs)), [10, 20, 50]),
            ("SDE-DPM-Solver++(2M), only the cap (s_tmin=0)",
             ours(lambda: SDEDPMSolverScheduler(s_tmin=0.0, **kwargs)), [20, 50]),
            ("SDE-DPM-Solver++(2M), only s_tmin (max_noise_refresh=1)",
             ours(lambda: SDEDPMSolverScheduler(max_noise_refresh=1.0, **kwargs)), [20, 50]),
            ("SDE-DPM-Solver++(2M), max_noise_refresh=0.2",
             ours(lambda: SDEDPMSolverScheduler(max_noise_refresh=0.2, **kwargs)), [10, 20, 50]),
            ("SDE-DPM-Solver++(2M), forget_prior=False",
             ours(lambda: SDEDPMSolverScheduler(forget_prior=False, **kwargs)), [50]),
            ("PC (defaults)", ours(lambda: PredictorCorrectorScheduler(**kwargs)), [25, 100]),
            ("PF DPM-Solver++(2M)", ours(lambda: ProbabilityFlowScheduler(solver="dpmpp_2m", **kwargs)), [50]),
            ("Diffusers ScoreSdeVe PC",
             lambda steps, gen: sample_score_sde_ve(mixture, steps, shape, gen, sigma_max=sigma_max), [100]),
            # Restart rows: "steps" is the evaluation budget.
            ("Restart (Heun, derived interval)", restart(), [20, 50]),
            ("Restart (Heun), sensitivity: high interval (ImageNet-64's top)",
             restart(fractions=RESTART_HIGH_GRID_FRACTIONS), [20, 50]),
            ("Restart (Heun), sensitivity: EDM's [0.06, 0.30] × σ_max/80",
             restart(interval=tuple(v * sigma_max / EDM_SIGMA_MAX for v in RESTART_INTERVAL_EDM)), [20, 50]),
            ("Restart (Heun), sensitivity: no restart pass (K = 0, same main grid)",
             restart(restart=False), [20, 50]),
        ]
        if args.only:
            samplers = [entry for entry in samplers if any(part in entry[0] for part in args.only)]
        label = f"VE {family}, σ_max {sigma_max:.1f}"
        for name, sampler, step_counts in samplers:
            for steps in step_counts:
                reports, seconds = [], 0.0
                for seed in range(args.seeds):
                    start = time.perf_counter()
                    samples, nfe = sampler(steps, torch.Generator().manual_seed(2 + 10 * seed))
                    seconds += time.perf_counter() - start
                    reference, _ = mixture.sample(args.num_samples, generator=torch.Generator().manual_seed(1000 + seed))
                    reports.append(quality_report(mixture, samples, reference, torch.Generator().manual_seed(3),
                                                  log_prob_reference=large_reference))
                rows.append(summarize(label, name, nfe, reports, seconds / args.seeds))
                print(f"  {label} {name:42s} NFE {nfe:4d}", flush=True)
        floor = []
        for seed in range(args.seeds):
            samples, _ = mixture.sample(args.num_samples, generator=torch.Generator().manual_seed(2 + 10 * seed))
            reference, _ = mixture.sample(args.num_samples, generator=torch.Generator().manual_seed(1000 + seed))
            floor.append(quality_report(mixture, samples, reference, torch.Generator().manual_seed(3),
                                        log_prob_reference=large_reference))
        rows.append(summarize(label, "true samples (noise floor)", 0, floor, 0.0))
    print_quality(rows)


if __name__ == "__main__":
    main()
