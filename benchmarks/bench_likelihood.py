"""Probability-flow log-likelihoods: accuracy against closed forms, and real versus pixel-shuffled digits.

1. Accuracy and NFE. An 8-dimensional, 4-component Gaussian mixture (`--dim`, `--components`) driven by its exact
   score under VE (σ_min = 0.01, σ_max = 200, `--ve_sigma_max`), VP and sub-VP (β 0.1 → 20). For several tolerances
   (rtol = atol), torchdiffeq's dopri5 (the default) beside SciPy's `solve_ivp` RK45, and the fixed-grid `"ab4"`
   on its default log-σ̄ grid, with the exact divergence and with Hutchinson (4 Rademacher probes). The error is in
   bits/dim against the closed form log p_ε(x) (the mixture perturbed to t = ε); "solver error" swaps the prior for the
   exact p_1 and so isolates the integration.
2. A DDPM trained on scikit-learn's digits (16×16, 8-bit, [−1, 1]): bits/dim of test-split images against the
   same images with their pixels shuffled, with uniform dequantisation and score_sde's 8-bit convention. The
   checkpoint is `benchmarks/digits_ddpm.py`'s `get_digits_ddpm()` (trained on all digits, so the test images were
   seen) when that module exists; with `--checkpoint held-out` (or without that module) a `UNet2DModel` of the
   same size is trained here on the train split only (~15 minutes on 2 busy CPU cores), cached in
   `~/.cache/score_diffusers/` (or `$SCORE_DIFFUSERS_CACHE`).
3. Solvers on that DDPM: the same test digits with the same dequantisation and probe per image under dopri5 at
   1e-7 (the reference), dopri5 and RK45 at 1e-5, dopri5 at 1e-4 and `"ab4"`: what each solve gives up on a real
   model.

    python benchmarks/bench_likelihood.py            # both parts
    python benchmarks/bench_likelihood.py --quick    # fewer tolerances and images
    python benchmarks/bench_likelihood.py --part accuracy   # or --part digits, --part solvers

Prints markdown tables and saves `benchmarks/results/likelihood_accuracy_vs_nfe.png` (error against NFE per SDE)
and `benchmarks/results/likelihood_digits_bpd.png` (real versus shuffled bits/dim).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from score_diffusers import ProbabilityFlowScheduler, log_likelihood
from score_diffusers.testing import ExactScoreModel, GaussianMixture
from score_diffusers.datasets import load_digits_images
from score_diffusers.likelihood import default_ab4_steps, eight_bit_offset

try:
    from machine import machine_description
    from plotting import RESULTS, pyplot, save_figure
except ImportError:  # run as a module from the repository root
    from benchmarks.machine import machine_description
    from benchmarks.plotting import RESULTS, pyplot, save_figure

# The fallback digits DDPM is cached outside the repository.
CACHE = Path(os.environ.get("SCORE_DIFFUSERS_CACHE", Path.home() / ".cache" / "score_diffusers"))
DIM, COMPONENTS, NUM_SAMPLES = 8, 4, 64
VE_SIGMA_MAX = 200.0
NUM_PROBES = 4
DIGITS_RANGE = (-1.0, 1.0)
DIGITS_RESOLUTION = 16
# Fallback digits DDPM: Adam(W) with a one-cycle schedule peaking at TRAIN_LR, batches of TRAIN_BATCH.
TRAIN_LR, TRAIN_BATCH = 2e-3, 64


# ---- part 1: accuracy against the closed form --------------------------------------------------------------------


@dataclass
class AccuracyRow:
    sde: str
    divergence: str
    rtol: float
    method: str
    nfe: int
    mean_error: float
    max_error: float
    solver_error: float
    max_solver_error: float
    stderr: float
    seconds: float
    max_error_estimate: float  # bits/dim; NaN for the adaptive solvers, which report none
    estimate_ratio: tuple[float, float]  # smallest and median estimate / solver error over the points (or NaN)


def accuracy_rows(
    rtols: list[float], ve_sigma_max: float = VE_SIGMA_MAX, dim: int = DIM, components: int = COMPONENTS
) -> list[AccuracyRow]:
    mixture = GaussianMixture.random(components, dim, mean_scale=0.5, generator=torch.Generator().manual_seed(0))
    samples, _ = mixture.sample(NUM_SAMPLES, generator=torch.Generator().manual_seed(1))
    to_bpd = 1 / (dim * math.log(2))
    rows = []
    for sde_type, kwargs in (("ve", {"sigma_max": ve_sigma_max}), ("vp", {}), ("subvp", {})):
        scheduler = ProbabilityFlowScheduler(sde_type=sde_type, **kwargs)
        model = ExactScoreModel(mixture, scheduler)
        sde = scheduler.sde

        def marginal(t: float) -> tuple[torch.Tensor, torch.Tensor]:
            t = torch.tensor(t, dtype=torch.float64)
            return sde.mean_coeff(t), sde.marginal_std(t)

        true = mixture.log_prob(samples, *marginal(scheduler.sampling_eps))
        for divergence in ("exact", "hutchinson"):
            # "ab4" runs on its default grid, whatever the tolerance (NaN in the rtol column).
            for rtol, method in [(r, m) for r in rtols for m in ("dopri5", "RK45")] + [(math.nan, "ab4")]:
                start = time.perf_counter()
                out = log_likelihood(
                    model, scheduler, samples, divergence=divergence, num_probes=NUM_PROBES, method=method,
                    dtype=torch.float64, generator=torch.Generator().manual_seed(2), show_progress=False,
                    **({} if method == "ab4" else {"rtol": rtol, "atol": rtol}),
                )
                seconds = time.perf_counter() - start
                error = (out.log_likelihood - true) * to_bpd
                prior_gap = out.prior_log_prob - mixture.log_prob(out.latent, *marginal(1.0))
                solver_error = (out.log_likelihood - prior_gap - true) * to_bpd
                rows.append(
                    AccuracyRow(
                        sde_type, divergence, rtol, method, out.nfe, float(error.abs().mean()),
                        float(error.abs().max()), float(solver_error.abs().mean()), float(solver_error.abs().max()),
                        float(out.log_likelihood_stderr.mean() * to_bpd), seconds,
                        float(out.error_estimate.max() * to_bpd),
                        estimate_ratio(out.error_estimate * to_bpd, solver_error),
                    )
                )
                print(f"  {sde_type:5s} {divergence:10s} rtol {rtol:5.0e} {method:6s} NFE {out.nfe:4d} "
                      f"{seconds:5.1f}s", flush=True)
    return rows


def estimate_ratio(estimate: torch.Tensor, error: torch.Tensor) -> tuple[float, float]:
    """The smallest and the median of estimate / |error| over the points."""
    ratio = estimate / error.abs()
    return float(ratio.min()), float(ratio.median())


SOLVER_NAMES = {"dopri5": "torchdiffeq dopri5", "RK45": "SciPy RK45", "ab4": "ab4 (log σ̄, default grid)"}


def print_accuracy(rows: list[AccuracyRow], dim: int = DIM, components: int = COMPONENTS) -> None:
    print(
        f"\n{dim}-D, {components}-component mixture, {NUM_SAMPLES} points, exact score, float64; "
        f"errors in bits/dim against log p_ε. Hutchinson uses {NUM_PROBES} Rademacher probes.\n"
    )
    print("| SDE | divergence | rtol = atol | solver | NFE | mean abs error | max abs error | "
          "solver error (exact p_1), mean | max | max error estimate | estimate / error, min | median | "
          "Hutchinson SE | seconds |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        stderr = f"{r.stderr:.4f}" if r.divergence == "hutchinson" else "0"
        rtol = "—" if math.isnan(r.rtol) else f"{r.rtol:.0e}"
        estimate = "—" if math.isnan(r.max_error_estimate) else f"{r.max_error_estimate:.2e}"
        ratios = " | ".join("—" if math.isnan(v) else f"{v:.1f}" for v in r.estimate_ratio)
        print(
            f"| {r.sde} | {r.divergence} | {rtol} | {SOLVER_NAMES[r.method]} | {r.nfe} | {r.mean_error:.2e} | "
            f"{r.max_error:.2e} | {r.solver_error:.2e} | {r.max_solver_error:.2e} | {estimate} | {ratios} | "
            f"{stderr} | {r.seconds:.1f} |"
        )


def plot_accuracy(rows: list[AccuracyRow], path: Path) -> None:
    """Mean absolute bits/dim error against NFE (log-log), one panel per SDE, one line per solver and divergence."""
    plt = pyplot()
    sdes = list(dict.fromkeys(r.sde for r in rows))
    figure, axes = plt.subplots(1, len(sdes), figsize=(5 * len(sdes), 4.2), squeeze=False)
    colors = {"dopri5": "tab:blue", "RK45": "tab:orange", "ab4": "tab:green"}
    for axis, sde in zip(axes[0], sdes):
        for method in SOLVER_NAMES:
            for divergence, style in (("exact", "-"), ("hutchinson", "--")):
                points = sorted(
                    (r.nfe, r.mean_error) for r in rows if (r.sde, r.method, r.divergence) == (sde, method, divergence)
                )
                if points:
                    axis.plot(*zip(*points), marker="o", linestyle=style, color=colors[method],
                              label=f"{SOLVER_NAMES[method]}, {divergence} divergence")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("model evaluations (NFE)")
        axis.set_ylabel("mean abs error (bits/dim)")
        axis.set_title(f"{sde.upper()}: error against log p_ε (a point per rtol = atol)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    save_figure(figure, path)


# ---- part 2: a DDPM on digits ----------------------------------------------------------------------------------------


def train_digits_ddpm(path: Path, steps: int, seed: int = 0) -> None:
    """Train a small DDPM on the digits' train split (ε-prediction, 1000 linear-β steps) and save a DDPMPipeline."""
    torch.manual_seed(seed)
    images, _ = load_digits_images(DIGITS_RESOLUTION, split="train")
    # Small enough to train in minutes on two CPU cores; attention-free.
    unet = UNet2DModel(
        sample_size=DIGITS_RESOLUTION, in_channels=1, out_channels=1, block_out_channels=(16, 32, 32),
        layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=TRAIN_LR, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=TRAIN_LR, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    unet.train()
    start = time.perf_counter()
    for step in range(steps):
        batch = images[torch.randint(0, images.shape[0], (TRAIN_BATCH,), generator=generator)]
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch.shape[0],), generator=generator)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(batch, noise, timesteps), timesteps).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"  train step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.0f}s", flush=True)
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(path)


def load_digits_ddpm(checkpoint: str, train_steps: int) -> tuple[UNet2DModel, DDPMScheduler, str]:
    """The digits DDPM and a note on where it came from.

    `"shared"`: `benchmarks/digits_ddpm.get_digits_ddpm()` (trained on all 1,797 digits, test images included), or
    this script's own when that module is absent. `"held-out"`: this script's own, trained on the train split only
    and cached in `CACHE`.
    """
    if checkpoint == "shared":
        try:
            from digits_ddpm import get_digits_ddpm
        except ImportError:
            try:
                from benchmarks.digits_ddpm import get_digits_ddpm
            except ImportError:
                get_digits_ddpm = None
        if get_digits_ddpm is not None:
            pipeline = get_digits_ddpm()
            return pipeline.unet, pipeline.scheduler, "benchmarks/digits_ddpm.py, trained on all digits incl. these"
    path = CACHE / f"likelihood_digits_ddpm_{train_steps}"
    if not (path / "model_index.json").exists():
        print(f"Training a digits DDPM for {train_steps} steps (cached in {path}) ...", flush=True)
        train_digits_ddpm(path, train_steps)
    pipeline = DDPMPipeline.from_pretrained(path)
    return pipeline.unet, pipeline.scheduler, f"this script's, {train_steps} steps on the train split only"


def digits_score_model(checkpoint: str, train_steps: int) -> tuple[UNet2DModel, ProbabilityFlowScheduler, str]:
    """`load_digits_ddpm`'s unet in eval mode without weight gradients, its scheduler as a score scheduler (the
    likelihood's convention) and the note on its source."""
    unet, ddpm_scheduler, source = load_digits_ddpm(checkpoint, train_steps)
    unet.eval().requires_grad_(False)
    return unet, ProbabilityFlowScheduler.from_config(ddpm_scheduler.config), source


def digits_comparison(num_images: int, checkpoint: str, train_steps: int, rtol: float) -> None:
    unet, scheduler, source = digits_score_model(checkpoint, train_steps)
    images, _ = load_digits_images(DIGITS_RESOLUTION, split="test")
    images = images[:num_images]
    generator = torch.Generator().manual_seed(0)
    # Shuffle each image's pixels with its own permutation: same values, no spatial structure.
    flat = images.reshape(num_images, -1)
    permutations = torch.stack([torch.randperm(flat.shape[1], generator=generator) for _ in range(num_images)])
    shuffled = torch.gather(flat, 1, permutations).reshape(images.shape)

    results = {}
    for name, batch in (("test images", images), ("pixel-shuffled", shuffled)):
        start = time.perf_counter()
        out = log_likelihood(
            unet, scheduler, batch, data_range=DIGITS_RANGE, dequantize=True, divergence="hutchinson",
            num_probes=1, rtol=rtol, atol=rtol, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
        )
        results[name] = (out, time.perf_counter() - start)

    print(
        f"\nDigits DDPM ({source}; {DIGITS_RESOLUTION}×{DIGITS_RESOLUTION}, ε-prediction, VP on its own ᾱ table), "
        f"the first {num_images} images of the test split; uniform dequantisation, Hutchinson (1 Rademacher probe), "
        f"dopri5 rtol = atol = {rtol:.0e}, bits/dim on the 8-bit scale (+{eight_bit_offset(DIGITS_RANGE):g} for [−1, 1]).\n"
    )
    print("| images | mean bits/dim | std | min | max | NFE | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (out, seconds) in results.items():
        bpd = out.bits_per_dim
        print(
            f"| {name} | {bpd.mean():.3f} | {bpd.std():.3f} | {bpd.min():.3f} | {bpd.max():.3f} | {out.nfe} | "
            f"{seconds:.0f} |"
        )
    real, fake = results["test images"][0].bits_per_dim, results["pixel-shuffled"][0].bits_per_dim
    print(f"\nReal images get fewer bits/dim than their shuffled copies in {int((real < fake).sum())}/{num_images} "
          f"pairs; mean gap {float((fake - real).mean()):.3f} bits/dim.")
    plot_digits(real, fake, RESULTS / "likelihood_digits_bpd.png")


def solver_agreement(num_images: int, checkpoint: str, train_steps: int) -> None:
    """Bits/dim of the same test digits by several solvers, each image with the same dequantisation and probe in
    every row (its own generator), against dopri5 at rtol = atol = 1e-7: the solvers' errors on a real model."""
    unet, scheduler, source = digits_score_model(checkpoint, train_steps)
    images = load_digits_images(DIGITS_RESOLUTION, split="test")[0][:num_images]
    default_steps = default_ab4_steps(scheduler.convention)
    solvers = {
        "dopri5, rtol = atol = 1e-7 (reference)": {"method": "dopri5", "rtol": 1e-7, "atol": 1e-7},
        "dopri5, 1e-5 (the default)": {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5},
        "SciPy RK45, 1e-5": {"method": "RK45", "rtol": 1e-5, "atol": 1e-5},
        "dopri5, 1e-4": {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4},
        f"ab4, default grid ({default_steps} steps)": {"method": "ab4"},
        f"ab4, {2 * default_steps} steps": {"method": "ab4", "num_steps": 2 * default_steps},
        f"ab4, {4 * default_steps} steps": {"method": "ab4", "num_steps": 4 * default_steps},
    }
    print(
        f"\nDigits DDPM ({source}), the first {num_images} test images; uniform dequantisation, Hutchinson (1 "
        "Rademacher probe), both drawn per image from its own seed, the same in every row; float64 integration. "
        "Difference in bits/dim against the first row, mean ± standard error and largest over the images.\n"
    )
    print("| solver | NFE | seconds | mean bits/dim | difference | max abs difference |")
    print("|---|---:|---:|---:|---:|---:|")
    reference = None
    for name, kwargs in solvers.items():
        start = time.perf_counter()
        out = log_likelihood(
            unet, scheduler, images, data_range=DIGITS_RANGE, dequantize=True, divergence="hutchinson", num_probes=1,
            dtype=torch.float64, generator=[torch.Generator().manual_seed(i) for i in range(num_images)],
            show_progress=False, **kwargs,
        )
        seconds = time.perf_counter() - start
        bpd = out.bits_per_dim.double()
        reference = bpd if reference is None else reference
        difference = bpd - reference
        print(
            f"| {name} | {out.nfe} | {seconds:.0f} | {float(bpd.mean()):.4f} | {float(difference.mean()):+.1e} ± "
            f"{float(difference.std() / math.sqrt(num_images)):.1e} | {float(difference.abs().max()):.1e} |",
            flush=True,
        )


def plot_digits(real: torch.Tensor, fake: torch.Tensor, path: Path) -> None:
    """Histograms of the real and pixel-shuffled bits/dim, and each real image against its shuffled copy."""
    plt = pyplot()
    real, fake = real.double().numpy(), fake.double().numpy()
    figure, (histogram, pairs) = plt.subplots(1, 2, figsize=(11, 4.2))
    low, high = min(real.min(), fake.min()), max(real.max(), fake.max())
    bins = torch.linspace(float(low), float(high), 41).numpy()
    histogram.hist(real, bins=bins, alpha=0.6, label=f"test images (mean {real.mean():.2f})")
    histogram.hist(fake, bins=bins, alpha=0.6, label=f"pixel-shuffled (mean {fake.mean():.2f})")
    histogram.set_xlabel("bits/dim (8-bit scale)")
    histogram.set_ylabel("images")
    histogram.set_title("Digits DDPM: bits/dim of real vs shuffled images")
    histogram.legend(fontsize=8)
    pairs.scatter(real, fake, s=14)
    pairs.plot([low, high], [low, high], color="gray", linestyle="--", label="equal bits/dim")
    pairs.set_xlabel("test image bits/dim")
    pairs.set_ylabel("its pixel-shuffled copy, bits/dim")
    pairs.set_title(f"Per image: real below shuffled in {int((real < fake).sum())}/{len(real)}")
    pairs.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tolerances and images")
    parser.add_argument("--train-steps", type=int, default=1500, help="training steps of the fallback digits DDPM")
    parser.add_argument(
        "--checkpoint", choices=("shared", "held-out"), default="shared",
        help="digits DDPM: benchmarks/digits_ddpm.py's (all digits) or this script's (train split only)",
    )
    parser.add_argument("--part", choices=("all", "accuracy", "digits", "solvers"), default="all",
                        help="which part to run")
    parser.add_argument("--rtols", type=float, nargs="+", default=None, help="tolerances of the accuracy part")
    parser.add_argument("--ve_sigma_max", type=float, default=VE_SIGMA_MAX, help="σ_max of the VE rows")
    parser.add_argument("--dim", type=int, default=DIM, help="dimension of the accuracy part's mixture")
    parser.add_argument("--components", type=int, default=COMPONENTS, help="components of that mixture")
    args = parser.parse_args()
    print(machine_description(), flush=True)
    if args.part in ("all", "accuracy"):
        rtols = args.rtols or ([1e-3, 1e-5] if args.quick else [1e-3, 1e-4, 1e-5, 1e-6])
        rows = accuracy_rows(rtols, args.ve_sigma_max, args.dim, args.components)
        print_accuracy(rows, args.dim, args.components)
        plot_accuracy(rows, RESULTS / "likelihood_accuracy_vs_nfe.png")
    if args.part in ("all", "digits"):
        digits_comparison(
            num_images=16 if args.quick else 64, checkpoint=args.checkpoint, train_steps=args.train_steps, rtol=1e-4
        )
    if args.part in ("all", "solvers"):
        solver_agreement(num_images=4 if args.quick else 16, checkpoint=args.checkpoint, train_steps=args.train_steps)


if __name__ == "__main__":
    main()
