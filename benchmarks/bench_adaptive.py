"""The adaptive-step reverse-SDE solver (`score_diffusers.sampling.adaptive_reverse_sde`): tolerance → evaluations
per sample → sample quality, beside predictor-corrector at 200 evaluations.

The 64-dimensional, 8-component mixture of `bench_schedulers.py` with its exact score: VE (σ 0.01..50) centred,
VE uncentred (shifted by a vector of norm 28, σ_max the largest pairwise distance, as in `bench_stochastic.py`),
and VP on DDPM's linear table. Rows: the default error rule (local error against `rtol`·σ_t) at three tolerances,
Jolicoeur-Martineau et al.'s data-unit rule (their ε_rel = 0.05, ε_abs = 0.0078), and PC with its defaults at 100
time points (200 evaluations), on paired seeds. Each figure is a mean over `--seeds` runs ± its standard error;
NFE is the mean over samples (and the largest).

Run from the repository root: `python benchmarks/bench_adaptive.py` (~10 min on 2 CPU cores).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from score_diffusers import PredictorCorrectorScheduler
from score_diffusers.sampling import adaptive_reverse_sde
from score_diffusers.testing import ExactScoreModel, quality_report, run_sampler

try:
    from bench_schedulers import LOG_PROB_REFERENCE_SIZE, METRICS, SIGMA_MIN
    from bench_stochastic import benchmark_arguments, mixtures
except ImportError:
    from benchmarks.bench_schedulers import LOG_PROB_REFERENCE_SIZE, METRICS, SIGMA_MIN
    from benchmarks.bench_stochastic import benchmark_arguments, mixtures

TOLERANCES = (0.1, 0.2, 0.4)
PAPER_RULE = {"rtol": 0.05, "atol": 0.0078}


def main() -> None:
    args = benchmark_arguments(__doc__)
    cases = {f"VE {name}": (mixture, {"sigma_min": SIGMA_MIN, "sigma_max": sigma_max})
             for name, (mixture, sigma_max) in mixtures(args.mixture_seed, args.mean_scale).items()}
    centred = next(iter(mixtures(args.mixture_seed, args.mean_scale).values()))[0]
    cases["VP, DDPM linear table"] = (centred, dict(DDPMScheduler(num_train_timesteps=1000).config))
    print("\n| SDE | sampler | NFE mean (max) | " + " | ".join(label for _, label in METRICS) + " |")
    print("|---|---|---:|" + "---:|" * len(METRICS))
    for case, (mixture, config) in cases.items():
        pc = PredictorCorrectorScheduler.from_config(config)
        convention = pc.convention
        sde = convention.sde
        large_reference, _ = mixture.sample(LOG_PROB_REFERENCE_SIZE, generator=torch.Generator().manual_seed(5))

        def score_fn(x, t, rows, sde=sde, mixture=mixture):
            return mixture.score(x, sde.mean_coeff(t), sde.marginal_std(t))

        rows = [(f"adaptive, rtol {rtol:g}" + (" (default)" if rtol == 0.2 else ""), {"rtol": rtol})
                for rtol in TOLERANCES]
        rows.append((f"adaptive, paper's rule (ε_rel {PAPER_RULE['rtol']}, ε_abs {PAPER_RULE['atol']})", PAPER_RULE))
        rows.append(("PC (defaults), 100 points", None))
        for name, kwargs in rows:
            reports, nfes, largest = [], [], 0
            for seed in range(args.seeds):
                generator = torch.Generator().manual_seed(2 + 10 * seed)
                if kwargs is None:
                    model = ExactScoreModel(mixture, pc)
                    samples = run_sampler(pc, model, (args.num_samples, mixture.dim), 100, generator=generator)
                    nfes.append(float(model.calls))
                    largest = model.calls
                else:
                    x_T = torch.randn(args.num_samples, mixture.dim, generator=generator) * sde.prior_std
                    result = adaptive_reverse_sde(score_fn, x_T, sde, convention.sampling_eps, generator=generator,
                                                  **kwargs)
                    samples = result.sample
                    nfes.append(float(result.nfe.double().mean()))
                    largest = max(largest, int(result.nfe.max()))
                reference, _ = mixture.sample(args.num_samples, generator=torch.Generator().manual_seed(1000 + seed))
                reports.append(quality_report(mixture, samples, reference, torch.Generator().manual_seed(3),
                                              log_prob_reference=large_reference))
            figures = []
            for key, _ in METRICS:
                values = torch.tensor([report[key] for report in reports], dtype=torch.float64)
                figures.append(f"{float(values.mean()):.4f} ± {float(values.std() / len(values) ** 0.5):.4f}")
            print(f"| {case} | {name} | {sum(nfes) / len(nfes):.0f} ({largest}) | " + " | ".join(figures) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
