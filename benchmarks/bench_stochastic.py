"""Low-NFE sampling of VE models, on a centred mixture and on one whose mean is far from 0 against σ_max.

The 64-dimensional, 8-component mixture of `bench_schedulers.py`, driven by its exact score, twice: as it is
(‖mean‖ ≈ 3, σ_max = 50) and shifted by a vector of norm 28, as [0, 1] image data sit far from 0 (NCSN++ trains on
uncentred CIFAR-10, ‖mean‖ ≈ 28 at σ_max = 50), with σ_max set to the data's largest pairwise distance as the
training scripts do. The prior N(0, σ_max²I) then misses p_T's mean by 28. Rows: `SDEDPMSolverScheduler` with its
defaults, at `eta=0` (the probability-flow ODE after the prior-forgetting first step) and without `forget_prior`,
our PC and probability flow, and Diffusers' `ScoreSdeVeScheduler`, on paired seeds; each figure is a mean over
`--seeds` runs ± its standard error, as in `bench_schedulers.py`.

Run from the repository root: `python benchmarks/bench_stochastic.py` (~10 min on 2 idle CPU cores).
"""

from __future__ import annotations

import argparse
import time

import torch

from score_diffusers import PredictorCorrectorScheduler, ProbabilityFlowScheduler, SDEDPMSolverScheduler
from score_diffusers.testing import ExactScoreModel, GaussianMixture, quality_report, run_sampler

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


def mixtures() -> dict[str, tuple[GaussianMixture, float]]:
    centred = GaussianMixture.random(COMPONENTS, DIM, generator=torch.Generator().manual_seed(0))
    shift = torch.randn(DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    uncentred = GaussianMixture(centred.means + shift / shift.norm() * UNCENTRED_MEAN_NORM, centred.stds, centred.weights)
    points, _ = uncentred.sample(PAIRWISE_SAMPLE, generator=torch.Generator().manual_seed(7))
    return {
        "centred": (centred, CENTRED_SIGMA_MAX),
        f"uncentred, ‖mean‖ {UNCENTRED_MEAN_NORM:g}": (uncentred, float(torch.cdist(points, points).max())),
    }


def benchmark_arguments(doc: str) -> argparse.Namespace:
    """`--seeds` and `--num_samples` of the mixture benchmarks; one intra-op thread; prints the machine line."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=50_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_description())
    return args


def main() -> None:
    args = benchmark_arguments(__doc__)
    shape = (args.num_samples, DIM)
    rows = []
    for family, (mixture, sigma_max) in mixtures().items():
        large_reference, _ = mixture.sample(LOG_PROB_REFERENCE_SIZE, generator=torch.Generator().manual_seed(5))
        kwargs = {"sigma_min": SIGMA_MIN, "sigma_max": sigma_max}

        def ours(make):
            def sample(steps, generator):
                scheduler = make()
                model = ExactScoreModel(mixture, scheduler)
                return run_sampler(scheduler, model, shape, steps, generator=generator), model.calls

            return sample

        samplers = [
            ("SDE-DPM-Solver++(2M) (defaults)", ours(lambda: SDEDPMSolverScheduler(**kwargs)), [10, 20, 50]),
            ("SDE-DPM-Solver++(2M), eta=0 (the ODE, prior forgotten)",
             ours(lambda: SDEDPMSolverScheduler(eta=0.0, **kwargs)), [10, 20, 50]),
            ("SDE-DPM-Solver++(2M), forget_prior=False",
             ours(lambda: SDEDPMSolverScheduler(forget_prior=False, **kwargs)), [50]),
            ("PC (defaults)", ours(lambda: PredictorCorrectorScheduler(**kwargs)), [25, 100]),
            ("PF DPM-Solver++(2M)", ours(lambda: ProbabilityFlowScheduler(solver="dpmpp_2m", **kwargs)), [50]),
            ("Diffusers ScoreSdeVe PC",
             lambda steps, gen: sample_score_sde_ve(mixture, steps, shape, gen, sigma_max=sigma_max), [100]),
        ]
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
