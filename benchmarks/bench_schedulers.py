"""Sample quality per model evaluation and per-step overhead of the score schedulers, beside Diffusers' own.

The data is a 64-dimensional, 8-component Gaussian mixture; every sampler is driven by its exact score (or exact ε),
so the figures measure the samplers alone. VE uses σ_min = 0.01, σ_max = 50; VP uses DDPM's linear ᾱ table
(N = 1000), which Diffusers' DDPM, DDIM and DPM-Solver++ schedulers sample with their own configs.

    python benchmarks/bench_schedulers.py            # full tables and plot (~45 min on 2 CPU cores)
    python benchmarks/bench_schedulers.py --quick    # smoke run
    python benchmarks/bench_schedulers.py --only "annealed langevin (defaults" --mixture_seed 1 --mean_scale 5

`--mixture_seed` and `--mean_scale` draw another mixture (`GaussianMixture.random`), to check that a default holds on
data it was not chosen on.

Each figure is the mean over `--seeds` independent runs, ± its standard error; each run draws `--num_samples`
samples and compares them with a fresh true sample of the same size: sliced W2, mode-weight TV, and the log-density
gap per dimension (mean log p_0 of 200,000 true samples minus that of the samples: > 0 when they are too spread
out). The last row, two independent true samples, is each figure's noise floor. Saves
`benchmarks/results/quality_vs_nfe.png`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    SASolverScheduler,
    ScoreSdeVeScheduler,
    UniPCMultistepScheduler,
)

from score_diffusers import (
    AnnealedLangevinScheduler,
    ModelConvention,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    SDEDPMSolverScheduler,
)
from score_diffusers.testing import ExactScoreModel, GaussianMixture, quality_report, run_loop, run_sampler

try:
    from bench_pipeline import ignoring_generator
    from machine import machine_description
    from plotting import RESULTS, pyplot, save_figure
except ImportError:  # run as a module from the repository root
    from benchmarks.bench_pipeline import ignoring_generator
    from benchmarks.machine import machine_description
    from benchmarks.plotting import RESULTS, pyplot, save_figure

DIM, COMPONENTS = 64, 8
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0
# NCSN's annealed Langevin step size ε (`consistent=False`), chosen by `--langevin_sweep` (199 levels × 5 steps): smaller
# values (NCSNv2's CIFAR-10 ε' = 6.2e-6 is ε = 1.24e-5 here; NCSN's 2e-5) leave the components too wide on this
# data, 1e-4 misplaces more mode weight and 2e-4 is past the stable range at the top levels.
ANNEALED_LANGEVIN_STEP_SIZE = 5e-5
LANGEVIN_SWEEP_STEP_SIZES = (6.2e-6, 2e-5, 5e-5, 1e-4, 2e-4)
ANNEALED_LANGEVIN_STEPS_PER_LEVEL = 5
# Consistent annealed sampling: one step per level, η = ε/(2σ_min²) = 0.025. On one seed at 995 levels, ε = 1e-5
# (η = 0.05) leaves the components ~2.5% too narrow (gap −0.013) and 2e-6 is nearly deterministic, so the prior's
# mismatch comes back (mode TV 0.014).
CONSISTENT_STEP_SIZE = 5e-6
# Karras et al.'s S_churn for the stochastic probability-flow rows: large enough that γ sits at its cap √2 − 1 at
# these step counts. Noise is added only above half the largest distance between component means, where p_σ is still
# nearly Gaussian (see `ProbabilityFlowScheduler`).
PROBABILITY_FLOW_CHURN = 40.0
# True samples whose mean log p_0 stands in for E_p[log p_0] in the log-density gap.
LOG_PROB_REFERENCE_SIZE = 200_000
TIMING_ROUNDS = 15


@dataclass
class Row:
    """One sampler at one step count: each figure's mean over the seeds and its standard error."""

    family: str
    sampler: str
    nfe: int
    means: dict[str, float]
    errors: dict[str, float]
    seconds: float


METRICS = (("sliced_w2", "sliced W2"), ("mode_tv", "mode TV"), ("logp_gap", "log-density gap / dim"))


def summarize(family: str, sampler: str, nfe: int, reports: list[dict[str, float]], seconds: float) -> Row:
    values = {name: torch.tensor([report[name] for report in reports], dtype=torch.float64) for name, _ in METRICS}
    errors = {
        name: float(value.std() / len(reports) ** 0.5) if len(reports) > 1 else float("nan")
        for name, value in values.items()
    }
    return Row(family, sampler, nfe, {name: float(value.mean()) for name, value in values.items()}, errors, seconds)


def ddpm_config_scheduler(klass, **overrides):
    """A Diffusers DDPM-family scheduler on the standard linear table, with x̂₀ clipping off (the data is not in [-1, 1])."""
    return klass(num_train_timesteps=1000, beta_schedule="linear", **overrides)


def sample_score_sde_ve(
    mixture: GaussianMixture, num_steps: int, shape, generator, sigma_max: float = SIGMA_MAX
) -> tuple[torch.Tensor, int]:
    """Diffusers' ScoreSdeVeScheduler PC loop as `ScoreSdeVePipeline` runs it (two model calls per step)."""
    scheduler = ScoreSdeVeScheduler(sigma_min=SIGMA_MIN, sigma_max=sigma_max, snr=0.16)
    model = ExactScoreModel(mixture, ModelConvention.from_config(scheduler.config))
    scheduler.set_timesteps(num_steps)
    scheduler.set_sigmas(num_steps)
    sample = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i]
        for _ in range(scheduler.config.correct_steps):
            sample = scheduler.step_correct(model(sample, sigma), sample, generator=generator).prev_sample
        output = scheduler.step_pred(model(sample, sigma), t, sample, generator=generator)
        sample, sample_mean = output.prev_sample, output.prev_sample_mean
    return sample_mean, model.calls


def sample_from_exact_prior(scheduler, mixture, num_steps, shape, generator) -> tuple[torch.Tensor, int]:
    """The plain loop started from the true p_T (the mixture perturbed to t = 1) instead of the prior N(0, σ_max²I):
    separates a sampler's own error from the prior's mismatch."""
    model = ExactScoreModel(mixture, scheduler)
    clean, _ = mixture.sample(shape[0], generator=generator)
    one = torch.tensor(1.0, dtype=torch.float64)
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    x_T = (scheduler.sde.mean_coeff(one) * clean + scheduler.sde.marginal_std(one) * noise).float()
    return run_loop(scheduler, model, x_T, num_steps, generator), model.calls


def sample_with(scheduler, mixture, num_steps, shape, generator, model_scheduler=None) -> tuple[torch.Tensor, int]:
    """The plain Diffusers loop; `model_scheduler` decides the exact model's conventions (default: `scheduler`)."""
    model = ExactScoreModel(mixture, model_scheduler or scheduler)
    return run_sampler(scheduler, model, shape, num_steps, generator=generator), model.calls


def quality_rows(
    quick: bool,
    num_samples: int,
    num_seeds: int,
    langevin_sweep: bool,
    only: str | None,
    mixture_seed: int = 0,
    mean_scale: float = 3.0,
) -> list[Row]:
    mixture = GaussianMixture.random(
        COMPONENTS, DIM, mean_scale=mean_scale, generator=torch.Generator().manual_seed(mixture_seed)
    )
    half_diameter = 0.5 * float(torch.cdist(mixture.means, mixture.means).max())
    large_reference, _ = mixture.sample(LOG_PROB_REFERENCE_SIZE, generator=torch.Generator().manual_seed(5))
    shape = (num_samples, DIM)
    # VP ε-model on DDPM's own table: our scheduler built from the DDPM config maps integer indices to ᾱ exactly.
    ddpm_epsilon = PredictorCorrectorScheduler.from_config(ddpm_config_scheduler(DDPMScheduler).config)

    def report(samples: torch.Tensor, seed: int) -> dict[str, float]:
        reference, _ = mixture.sample(num_samples, generator=torch.Generator().manual_seed(1000 + seed))
        return quality_report(
            mixture, samples, reference, torch.Generator().manual_seed(3), log_prob_reference=large_reference
        )

    def pc(**kwargs):
        return PredictorCorrectorScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **kwargs)

    def pf(**kwargs):
        return ProbabilityFlowScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **kwargs)

    def sde_dpm(**kwargs):
        return SDEDPMSolverScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **kwargs)

    def annealed_langevin(levels: int, **overrides):
        return AnnealedLangevinScheduler(num_train_timesteps=levels, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **overrides)

    def ncsn(levels: int, step_size: float | None = ANNEALED_LANGEVIN_STEP_SIZE):
        return annealed_langevin(
            levels,
            consistent=False,
            forget_prior=False,
            steps_per_level=ANNEALED_LANGEVIN_STEPS_PER_LEVEL,
            step_size=step_size,
        )

    def ddpm_family(klass, step_takes_generator: bool = True, **overrides):
        """`klass` on DDPM's table in the plain loop; `step_takes_generator=False` for a `step` that refuses one."""

        def make():
            scheduler = ddpm_config_scheduler(klass, **overrides)
            return scheduler if step_takes_generator else ignoring_generator(scheduler)

        return lambda steps, gen: sample_with(make(), mixture, steps, shape, gen, model_scheduler=ddpm_epsilon)

    def ours(make: Callable[[], object]):
        return lambda steps, gen: sample_with(make(), mixture, steps, shape, gen)

    def ours_on_ddpm(klass, **overrides):
        config = ddpm_config_scheduler(DDPMScheduler).config
        return lambda steps, gen: sample_with(klass.from_config(config, **overrides), mixture, steps, shape, gen)

    sweeps: list[tuple[str, str, Callable, list[int]]] = [
        ("VE", "PC (defaults: ancestral + Langevin)", ours(pc), [50, 100]),
        ("VE", "PC, corrector_norm='batch'", ours(lambda: pc(corrector_norm="batch")), [100]),
        ("VE", "PC, corrector_norm='sample'", ours(lambda: pc(corrector_norm="sample")), [100]),
        ("VE", "PC ancestral + Langevin at score_sde's constant snr", ours(lambda: pc(prior_snr=None)), [100]),
        ("VE", "PC reverse diffusion + Langevin", ours(lambda: pc(predictor="reverse_diffusion")), [100]),
        ("VE", "PF DPM-Solver++(2M) (karras)", ours(lambda: pf(solver="dpmpp_2m")), [25, 50]),
        ("VE", "PF Heun (karras)", ours(pf), [25, 50]),
        ("VE", "PF UniPC (ours) (karras)", ours(lambda: pf(solver="unipc")), [10, 20]),
        ("VE", "PF UniPC (ours) (log σ)", ours(lambda: pf(solver="unipc", time_spacing="log_sigma")), [10, 20]),
        ("VE", f"PF DPM-Solver++(2M) + churn above σ = {half_diameter:.1f} (karras)",
         ours(lambda: pf(solver="dpmpp_2m", s_churn=PROBABILITY_FLOW_CHURN, s_tmin=half_diameter)), [25, 50]),
        ("VE", "SDE-DPM-Solver++(2M) (karras)", ours(sde_dpm), [20, 50]),
        ("VE", "SDE-DPM-Solver++(2M) (log σ)", ours(lambda: sde_dpm(time_spacing="log_sigma")), [20, 50]),
        ("VE", "PF DPM-Solver++(2M), x_T from the true p_T (diagnostic)",
         lambda steps, gen: sample_from_exact_prior(pf(solver="dpmpp_2m"), mixture, steps, shape, gen), [50]),
        ("VE", "Annealed Langevin (defaults: consistent, 1 step/level, prior forgotten)",
         lambda steps, gen: sample_with(annealed_langevin(steps), mixture, steps, shape, gen), [199, 999]),
        ("VE", "Annealed Langevin, NCSN (ε = 5e-5, 5 steps/level)",
         lambda steps, gen: sample_with(ncsn(steps), mixture, steps, shape, gen), [100, 199]),
        ("VE", "Annealed Langevin, NCSN (NCSNv2 technique 4 ε, 5 steps/level)",
         lambda steps, gen: sample_with(ncsn(steps, None), mixture, steps, shape, gen), [199]),
        ("VE", f"Annealed Langevin, consistent (ε = {CONSISTENT_STEP_SIZE:g}, 1 step/level, prior kept)",
         lambda steps, gen: sample_with(
             annealed_langevin(steps, step_size=CONSISTENT_STEP_SIZE, forget_prior=False), mixture, steps, shape, gen),
         [995]),
        ("VE", "Diffusers ScoreSdeVe PC", lambda steps, gen: sample_score_sde_ve(mixture, steps, shape, gen), [100, 1000]),
        ("VP", "PF DPM-Solver++(2M) (karras)", ours_on_ddpm(ProbabilityFlowScheduler, solver="dpmpp_2m"),
         [10, 20, 25, 50]),
        ("VP", "PF DPM-Solver++(3M) (karras)", ours_on_ddpm(ProbabilityFlowScheduler, solver="dpmpp_3m"), [10, 20]),
        ("VP", "PF DPM-Solver++(3M) (log σ)",
         ours_on_ddpm(ProbabilityFlowScheduler, solver="dpmpp_3m", time_spacing="log_sigma"), [10, 20]),
        ("VP", "PF UniPC (ours) (karras)", ours_on_ddpm(ProbabilityFlowScheduler, solver="unipc"), [10, 20]),
        ("VP", "PF UniPC (ours) (log σ)",
         ours_on_ddpm(ProbabilityFlowScheduler, solver="unipc", time_spacing="log_sigma"), [10, 20]),
        ("VP", "SDE-DPM-Solver++(2M) (defaults)", ours_on_ddpm(SDEDPMSolverScheduler), [10, 20, 50]),
        ("VP", "SDE-DPM-Solver++(2M), max_noise_refresh=0.2",
         ours_on_ddpm(SDEDPMSolverScheduler, max_noise_refresh=0.2), [10, 20, 50]),
        ("VP", "SDE-DPM-Solver++(2M), eta=0 (log σ)", ours_on_ddpm(SDEDPMSolverScheduler, eta=0.0), [10, 20]),
        ("VP", "SDE-DPM-Solver++(2M), eta=0, grid ending at t = 0.02 (σ̄ ≈ 0.08; hand-set)",
         ours_on_ddpm(SDEDPMSolverScheduler, eta=0.0, sampling_eps=0.02), [10, 20]),
        ("VP", "PF Heun (karras)", ours_on_ddpm(ProbabilityFlowScheduler), [25]),
        ("VP", "PC (defaults: ancestral + Langevin)", ours_on_ddpm(PredictorCorrectorScheduler), [100]),
        ("VP", "PC, corrector_norm='batch'", ours_on_ddpm(PredictorCorrectorScheduler, corrector_norm="batch"), [100]),
        ("VP", "Diffusers DDPM", ddpm_family(DDPMScheduler, clip_sample=False), [1000]),
        ("VP", "Diffusers DDIM", ddpm_family(DDIMScheduler, clip_sample=False), [50, 100]),
        ("VP", "Diffusers DPM-Solver++(2M)", ddpm_family(DPMSolverMultistepScheduler), [10, 20, 50]),
        ("VP", "Diffusers DPM-Solver++(3M)", ddpm_family(DPMSolverMultistepScheduler, solver_order=3), [10, 20]),
        ("VP", "Diffusers UniPC (defaults: bh2, order 2, x̂₀)",
         ddpm_family(UniPCMultistepScheduler, step_takes_generator=False), [10, 20]),
        ("VP", "Diffusers SA-Solver (stochastic Adams, defaults)", ddpm_family(SASolverScheduler), [10, 20]),
    ]
    if langevin_sweep:
        sweeps += [
            ("VE", f"Annealed Langevin, NCSN, step size {step_size:g}",
             lambda steps, gen, step_size=step_size: sample_with(ncsn(steps, step_size), mixture, steps, shape, gen),
             [199])
            for step_size in LANGEVIN_SWEEP_STEP_SIZES
        ]
    if only is not None:
        sweeps = [sweep for sweep in sweeps if only.lower() in f"{sweep[0]} {sweep[1]}".lower()]
    rows = []
    for family, name, sampler, step_counts in sweeps:
        for steps in step_counts[:1] if quick else step_counts:
            reports, seconds = [], 0.0
            for seed in range(num_seeds):
                start = time.perf_counter()
                samples, nfe = sampler(steps, torch.Generator().manual_seed(2 + 10 * seed))
                seconds += time.perf_counter() - start
                reports.append(report(samples, seed))
            rows.append(summarize(family, name, nfe, reports, seconds / num_seeds))
            print(f"  {family} {name:38s} NFE {nfe:5d}  {seconds / num_seeds:6.1f}s per seed", flush=True)
    floor_reports = [
        report(mixture.sample(num_samples, generator=torch.Generator().manual_seed(2 + 10 * seed))[0], seed)
        for seed in range(num_seeds)
    ]
    rows.append(summarize("both", "true samples (noise floor)", 0, floor_reports, 0.0))
    return rows


def print_quality(rows: list[Row]) -> None:
    print("\n| SDE | sampler | NFE | " + " | ".join(label for _, label in METRICS) + " | seconds |")
    print("|---|---|---:|" + "---:|" * len(METRICS) + "---:|")
    for row in rows:
        figures = " | ".join(f"{row.means[name]:.4f} ± {row.errors[name]:.4f}" for name, _ in METRICS)
        print(f"| {row.family} | {row.sampler} | {row.nfe} | {figures} | {row.seconds:.1f} |")


def plot_quality(rows: list[Row], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    floor = next(row for row in rows if row.family == "both")
    for line, family in enumerate(("VE", "VP")):
        samplers = dict.fromkeys(row.sampler for row in rows if row.family == family)
        for column, (field, label) in enumerate(METRICS):
            axis = axes[line, column]
            for sampler in samplers:
                points = sorted(
                    (row.nfe, abs(row.means[field]), row.errors[field])
                    for row in rows
                    if row.sampler == sampler and row.family == family
                )
                nfes, means, errors = zip(*points)
                axis.errorbar(nfes, means, yerr=errors, marker="o", capsize=3, label=sampler)
            axis.axhline(abs(floor.means[field]), color="gray", linestyle="--", label="noise floor")
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("model evaluations (NFE)")
            axis.set_title(f"{family}: {label}" + (" (absolute value)" if field == "logp_gap" else ""))
        axes[line, 0].legend(fontsize=7)
    save_figure(figure, path)


def step_overhead(repeats: int) -> None:
    """Seconds per `step` call (model excluded) on one image-shaped tensor, ours beside Diffusers'."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(16, 3, 64, 64, generator=generator)
    model_output = torch.randn(16, 3, 64, 64, generator=generator)

    def time_pair(ours: Callable[[], object], theirs: Callable[[], object]) -> tuple[float, float]:
        """Seconds per call of each, best of `TIMING_ROUNDS` interleaved rounds of `repeats` calls (timeit's rule:
        the fastest round is the one least disturbed by other work on the machine)."""
        best = [float("inf"), float("inf")]
        for _ in range(TIMING_ROUNDS):
            for position, call in enumerate((ours, theirs)):
                call()
                start = time.perf_counter()
                for _ in range(repeats):
                    call()
                best[position] = min(best[position], (time.perf_counter() - start) / repeats)
        return best[0], best[1]

    ve_reference = ScoreSdeVeScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    ve_reference.set_timesteps(repeats + 1)
    ve_reference.set_sigmas(repeats + 1)
    reference_t = ve_reference.timesteps[1]

    def fresh(scheduler, evaluations: int):
        # Enough entries for every timed call; every call reuses the first (sizes are what matter).
        scheduler.set_timesteps(evaluations)
        return scheduler

    def our_step(scheduler):
        def call():
            scheduler._step_index = 0
            scheduler.step(model_output, scheduler.timesteps[0], sample, generator=generator)

        return call

    pc_correct = fresh(PredictorCorrectorScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX), 10)
    pc_predict = fresh(
        PredictorCorrectorScheduler(
            sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, predictor="reverse_diffusion", corrector="none"
        ),
        10,
    )
    pf_euler = fresh(ProbabilityFlowScheduler(solver="euler"), 10)
    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    pairs = [
        ("Langevin corrector", our_step(pc_correct), "ScoreSdeVe.step_correct",
         lambda: ve_reference.step_correct(model_output, sample, generator=generator)),
        ("reverse-diffusion predictor", our_step(pc_predict), "ScoreSdeVe.step_pred",
         lambda: ve_reference.step_pred(model_output, reference_t, sample, generator=generator)),
        ("probability-flow Euler", our_step(pf_euler), "DDIM.step",
         lambda: ddim.step(model_output, ddim.timesteps[0], sample)),
    ]
    print(
        f"\nPer-step cost, model excluded, on a (16, 3, 64, 64) float32 tensor, best of {TIMING_ROUNDS} interleaved "
        f"rounds of {repeats} calls:\n"
    )
    print("| ours | µs | Diffusers | µs | ours / Diffusers |")
    print("|---|---:|---|---:|---:|")
    for our_name, our_call, their_name, their_call in pairs:
        ours_seconds, theirs_seconds = time_pair(our_call, their_call)
        print(
            f"| {our_name} | {ours_seconds * 1e6:.0f} | {their_name} | {theirs_seconds * 1e6:.0f} | "
            f"{ours_seconds / theirs_seconds:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer step counts and samples")
    parser.add_argument(
        "--num_samples", type=int, default=None, help="samples per sampler and seed (default 50000, quick 2000)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="independent runs per row (default 3, quick 2)")
    parser.add_argument("--langevin_sweep", action="store_true", help="add annealed Langevin at several step sizes")
    parser.add_argument("--mixture_seed", type=int, default=0, help="seed of the random mixture (default 0)")
    parser.add_argument(
        "--mean_scale", type=float, default=3.0, help="std of the mixture's component means (default 3.0)"
    )
    parser.add_argument("--skip_quality", action="store_true", help="only the per-step overhead table")
    parser.add_argument(
        "--only",
        default=None,
        help="only the quality rows whose 'SDE sampler' label contains this text (case-insensitive), e.g. 'VE PF'; "
        "no plot and no overhead table",
    )
    args = parser.parse_args()
    print(machine_description())
    if not args.skip_quality:
        num_samples = args.num_samples or (2000 if args.quick else 50_000)
        num_seeds = args.seeds or (2 if args.quick else 3)
        rows = quality_rows(
            args.quick, num_samples, num_seeds, args.langevin_sweep, args.only, args.mixture_seed, args.mean_scale
        )
        print(f"\nmixture: seed {args.mixture_seed}, mean scale {args.mean_scale:g}")
        print_quality(rows)
        if args.only is None:
            plot_quality(rows, RESULTS / "quality_vs_nfe.png")
    if args.only is None:
        step_overhead(repeats=5 if args.quick else 20)


if __name__ == "__main__":
    main()
