"""Issue 3's bars for `ScoreGuidedPipeline` on a DDPM trained with Diffusers' own code on the digits (16×16).

1. Sample quality per model evaluation: Fréchet distance (FD) to the real digits, in the penultimate features of a
   separately trained plain CNN, for Diffusers' `DDPMPipeline` (1000-step ancestral `DDPMScheduler`) and for the
   package's VP schedulers swapped into `ScoreGuidedPipeline` at ≤ 100 model evaluations.
2. Classifier guidance with a `NoiseConditionalClassifier` trained on the same noise process: the share of guided
   samples that the feature CNN classifies as the requested class (bar ≥ 95%) and FD guided / unguided (bar ≤ 1.5×).
3. Guidance overhead: time per sample with / without guidance at the same scheduler and number of evaluations
   (guidance costs one classifier forward and backward per model evaluation).

Issue 13's digits bar, with `--low-nfe` (only this table is run): FD at exactly 10 and 20 model evaluations for the
package's `ProbabilityFlowScheduler` (`dpmpp_3m`, `dpmpp_2m`, `unipc`) and `SDEDPMSolverScheduler` (defaults,
`eta=0`, and `eta=0` with its grid ended by hand at t = 0.02) in `ScoreGuidedPipeline`, beside Diffusers'
`DPMSolverMultistepScheduler` (orders 2 and 3), `SASolverScheduler` and `UniPCMultistepScheduler` in Diffusers' own
`DDPMPipeline`, and `DDPMScheduler` at 1000 steps; all on the same DDPM, seeds and number of samples, FD ± the standard
deviation over bootstrap resamples of the generated samples.

Run from the repository root: `python benchmarks/bench_pipeline.py` (add `--num-samples 128` for a quicker, noisier
run; `--low-nfe` for issue 13's table). The DDPM (`benchmarks/digits_ddpm.py`) and the noise-conditional classifier
are trained once and cached under `benchmarks/results/`; the feature CNN is retrained each run. Prints markdown tables
and saves `benchmarks/results/pipeline_fd_vs_nfe.png` (FD per model evaluation, guided accuracy and FD per guidance
scale; not with `--low-nfe`).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, SASolverScheduler, UniPCMultistepScheduler,
)

from score_diffusers import (
    NoiseConditionalClassifier,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    ScoreGuidedPipeline,
    SDEDPMSolverScheduler,
)
from score_diffusers.datasets import load_digits_images

try:
    from digits_ddpm import DEFAULT_OUTPUT_DIR, get_digits_ddpm
    from machine import machine_description
    from plotting import RESULTS, pyplot, save_figure
except ImportError:
    from benchmarks.digits_ddpm import DEFAULT_OUTPUT_DIR, get_digits_ddpm
    from benchmarks.machine import machine_description
    from benchmarks.plotting import RESULTS, pyplot, save_figure

DEFAULT_CLASSIFIER_DIR = os.path.join(os.path.dirname(DEFAULT_OUTPUT_DIR), "digits_noisy_classifier")
NUM_CLASSES = 10
# Bars of issue 3.
MIN_GUIDED_ACCURACY = 0.95
MAX_GUIDED_FD_RATIO = 1.5
# Model evaluations of issue 13's low-NFE table.
LOW_NFE = (10, 20)


# ---- feature network and Fréchet distance ----------------------------------------------------------------------


class FeatureCNN(torch.nn.Module):
    """A plain digits classifier on clean images in [−1, 1]; its 32-dim penultimate layer gives the FD features."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 32), torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(32, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features `(batch, 32)` and logits `(batch, 10)` of images `(batch, 1, 16, 16)`."""
        features = self.body(images)
        return features, self.head(features)


def train_feature_cnn(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> FeatureCNN:
    """Cross-entropy training with small random shifts (±1 pixel) for robustness to generated strokes."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = FeatureCNN()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(steps):
        index = torch.randint(len(images), (128,), generator=generator)
        shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
        batch = torch.roll(images[index], shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(network(batch)[1], labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return network.eval().requires_grad_(False)


def frechet_distance(features: torch.Tensor, reference: torch.Tensor) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) between two sets of feature vectors `(n, d)`."""
    x, y = features.double().numpy(), reference.double().numpy()
    mean_x, mean_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covariance_sqrt = scipy.linalg.sqrtm(cov_x @ cov_y).real
    return float(((mean_x - mean_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * covariance_sqrt))


def bootstrap_fd_std(features: torch.Tensor, reference: torch.Tensor, draws: int = 50, seed: int = 0) -> float:
    """Standard deviation of the FD over `draws` resamples (with replacement) of `features`: its sampling noise."""
    generator = torch.Generator().manual_seed(seed)
    indices = [torch.randint(len(features), (len(features),), generator=generator) for _ in range(draws)]
    return float(np.std([frechet_distance(features[index], reference) for index in indices]))


# ---- noise-conditional classifier -------------------------------------------------------------------------------


def get_noisy_classifier(
    pipeline: DDPMPipeline, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, cache_dir: str
) -> NoiseConditionalClassifier:
    """q_φ(y | x_t, t) on x_t = `DDPMScheduler.add_noise`(x₀, ε, t), t uniform on the DDPM grid, fed t like the unet.

    Loaded from `cache_dir` when a save is there (it depends only on the noise schedule and the unet's image size and
    time embedding, not on the DDPM's weights), else trained and saved there with `save_pretrained`.
    """
    if os.path.isfile(os.path.join(cache_dir, "config.json")):
        return NoiseConditionalClassifier.from_pretrained(cache_dir).requires_grad_(False)
    print("Training the noise-conditional classifier ...", flush=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    scheduler: DDPMScheduler = pipeline.scheduler
    classifier = NoiseConditionalClassifier.from_unet(
        pipeline.unet, num_classes=NUM_CLASSES, block_out_channels=(16, 32, 32), norm_num_groups=8
    )
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    for _ in range(steps):
        index = torch.randint(len(images), (128,), generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (128,), generator=generator)
        noise = torch.randn(images[index].shape, generator=generator)
        noisy = scheduler.add_noise(images[index], noise, timesteps)
        loss = F.cross_entropy(classifier(noisy, timesteps.float()).logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    classifier.save_pretrained(cache_dir)
    return classifier.eval().requires_grad_(False)


# ---- sampling ---------------------------------------------------------------------------------------------------


def timed(sample: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    images = sample()
    return images, time.perf_counter() - start


def diffusers_pipeline_samples(
    pipeline: DDPMPipeline, num_samples: int, num_inference_steps: int, seed: int
) -> tuple[torch.Tensor, float]:
    """Diffusers' own `DDPMPipeline` samples in [−1, 1] and the seconds they took."""
    pipeline.set_progress_bar_config(disable=True)
    images, seconds = timed(
        lambda: pipeline(batch_size=num_samples, generator=torch.Generator().manual_seed(seed),
                         num_inference_steps=num_inference_steps, output_type="np").images
    )
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1, seconds


def ddpm_baseline(pipeline: DDPMPipeline, num_samples: int, seed: int) -> tuple[torch.Tensor, float]:
    """Diffusers' own DDPMPipeline, 1000 ancestral steps; images in [−1, 1]."""
    return diffusers_pipeline_samples(pipeline, num_samples, pipeline.scheduler.config.num_train_timesteps, seed)


def score_pipeline_samples(
    pipeline: ScoreGuidedPipeline, num_samples: int, num_inference_steps: int, seed: int, **kwargs
) -> tuple[torch.Tensor, float]:
    """`ScoreGuidedPipeline` samples in [−1, 1] and the seconds they took."""
    images, seconds = timed(
        lambda: pipeline(batch_size=num_samples, num_inference_steps=num_inference_steps,
                         generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs).images
    )
    return images * 2 - 1, seconds


def vp_schedulers(ddpm_config) -> dict[str, tuple[object, int]]:
    """The package's VP samplers configured from the checkpoint's DDPMScheduler config, each at ≤ 100 evaluations."""
    return {
        "ProbabilityFlow heun, karras (50 points)": (ProbabilityFlowScheduler.from_config(ddpm_config), 50),
        "ProbabilityFlow euler (DDIM), karras": (ProbabilityFlowScheduler.from_config(ddpm_config, solver="euler"), 100),
        "PC ancestral, no corrector": (
            PredictorCorrectorScheduler.from_config(ddpm_config, predictor="ancestral", corrector="none"), 100
        ),
        "PC reverse_diffusion + Langevin (constant snr 0.16)": (
            PredictorCorrectorScheduler.from_config(ddpm_config, predictor="reverse_diffusion", prior_snr=None),
            50,
        ),
    }


def ignoring_generator(scheduler):
    """`DDPMPipeline` passes `generator=` to `step`; Diffusers' deterministic `UniPCMultistepScheduler` rejects it."""
    step = scheduler.step
    scheduler.step = lambda *args, generator=None, **kwargs: step(*args, **kwargs)
    return scheduler


def low_nfe_schedulers(ddpm_config) -> dict[str, tuple[Callable[[], object], bool]]:
    """Issue 13's rows: name → (a fresh scheduler, whether it runs in Diffusers' `DDPMPipeline` rather than
    `ScoreGuidedPipeline`); each takes one model evaluation per inference step."""
    return {
        **{
            f"ProbabilityFlow {solver}": (
                lambda solver=solver: ProbabilityFlowScheduler.from_config(ddpm_config, solver=solver), False
            )
            for solver in ("dpmpp_3m", "dpmpp_2m", "unipc")
        },
        "SDEDPMSolver": (lambda: SDEDPMSolverScheduler.from_config(ddpm_config), False),
        "SDEDPMSolver eta=0": (lambda: SDEDPMSolverScheduler.from_config(ddpm_config, eta=0.0), False),
        "SDEDPMSolver eta=0, grid ending at t = 0.02 (hand-set)": (
            lambda: SDEDPMSolverScheduler.from_config(ddpm_config, eta=0.0, sampling_eps=0.02), False
        ),
        "Diffusers DPMSolverMultistep (order 2)": (lambda: DPMSolverMultistepScheduler.from_config(ddpm_config), True),
        "Diffusers DPMSolverMultistep (order 3)": (
            lambda: DPMSolverMultistepScheduler.from_config(ddpm_config, solver_order=3), True
        ),
        "Diffusers SASolver (stochastic Adams)": (lambda: SASolverScheduler.from_config(ddpm_config), True),
        "Diffusers UniPCMultistep": (
            lambda: ignoring_generator(UniPCMultistepScheduler.from_config(ddpm_config)), True
        ),
    }


def low_nfe_table(ddpm: DDPMPipeline, num_samples: int, seed: int, fd_and_std: Callable, real_row: tuple) -> None:
    """Prints issue 13's table: FD ± bootstrap std per sampler at `LOW_NFE` evaluations, and DDPMScheduler at 1000.

    Evaluations are counted with a forward hook on the unet (one call per batch and evaluation).
    """
    evaluations = [0]
    hook = ddpm.unet.register_forward_hook(lambda *_: evaluations.__setitem__(0, evaluations[0] + 1))
    rows = [real_row]
    print("Sampling: DDPMPipeline, 1000 steps ...", flush=True)
    samples, seconds = ddpm_baseline(ddpm, num_samples, seed)
    rows.append(("Diffusers DDPMPipeline (DDPMScheduler, ancestral)", evaluations[0], *fd_and_std(samples), seconds))
    for num_evaluations in LOW_NFE:
        for name, (make_scheduler, in_ddpm_pipeline) in low_nfe_schedulers(ddpm.scheduler.config).items():
            print(f"Sampling: {name}, {num_evaluations} steps ...", flush=True)
            evaluations[0] = 0
            if in_ddpm_pipeline:
                pipe = DDPMPipeline(unet=ddpm.unet, scheduler=make_scheduler())
                samples, seconds = diffusers_pipeline_samples(pipe, num_samples, num_evaluations, seed)
                name = f"{name} in DDPMPipeline"
            else:
                pipe = ScoreGuidedPipeline(unet=ddpm.unet, scheduler=make_scheduler())
                pipe.set_progress_bar_config(disable=True)
                samples, seconds = score_pipeline_samples(pipe, num_samples, num_evaluations, seed)
                name = f"package {name} in ScoreGuidedPipeline"
            rows.append((name, evaluations[0], *fd_and_std(samples), seconds))
    hook.remove()
    print(f"\n{num_samples} samples per row, seed {seed} (the same initial noise in every row), FD ± std over 50 "
          "bootstrap resamples of the generated samples.\n")
    print("| sampler | model evaluations | FD ↓ | s / sample |")
    print("| --- | ---: | ---: | ---: |")
    for name, count, fd, std, seconds in rows:
        per_sample = "—" if seconds != seconds else f"{seconds / num_samples:.4f}"
        print(f"| {name} | {count} | {fd:.2f} ± {std:.2f} | {per_sample} |")


def plot_results(rows: list[tuple], guided_rows: list[tuple], guidance_scales: list[float], path: Path) -> None:
    """FD against model evaluations per sampler; share classified as requested and FD ratio against guidance scale.

    `rows` and `guided_rows` are `main`'s table rows; `guidance_scales[i]` is the scale of `guided_rows[i]` (0 for
    the unguided row).
    """
    plt = pyplot()
    figure, (quality, accuracy, fd_ratio) = plt.subplots(
        1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [2, 1, 1]}
    )
    markers = iter("os^Dv<>pP*")
    for name, evaluations, fd, _ in rows:
        if isinstance(evaluations, int):
            quality.scatter(evaluations, fd, s=50, marker=next(markers, "o"), label=name, zorder=3)
        else:  # the real digits: the floor this sample size allows
            quality.axhline(fd, color="gray", linestyle="--", label=name)
    quality.set_xscale("log")
    quality.set_xlim(left=20, right=3000)
    quality.set_ylim(bottom=0)
    quality.set_xlabel("model evaluations (NFE)")
    quality.set_ylabel("FD to the training digits (lower is better)")
    quality.set_title("Sample quality per model evaluation")
    quality.grid(True, which="both", alpha=0.3)
    quality.legend(fontsize=7)

    unguided_fd = guided_rows[0][2]
    accuracy.plot(guidance_scales, [100 * row[1] for row in guided_rows], marker="o")
    accuracy.axhline(
        100 * MIN_GUIDED_ACCURACY, color="gray", linestyle="--", label=f"bar ≥ {MIN_GUIDED_ACCURACY:.0%}"
    )
    accuracy.set_ylim(0, 105)
    accuracy.set_ylabel("classified as requested (%)")
    fd_ratio.plot(guidance_scales, [row[2] / unguided_fd for row in guided_rows], marker="o")
    fd_ratio.axhline(MAX_GUIDED_FD_RATIO, color="gray", linestyle="--", label=f"bar ≤ {MAX_GUIDED_FD_RATIO}×")
    fd_ratio.set_ylim(0, 1.15 * max(MAX_GUIDED_FD_RATIO, *(row[2] / unguided_fd for row in guided_rows)))
    fd_ratio.set_ylabel("FD guided / unguided")
    for axis, title in ((accuracy, "Guided: requested class"), (fd_ratio, "Guided: FD cost")):
        axis.set_xlabel("guidance scale w (0 = unguided)")
        axis.set_title(f"{title} (PC ancestral, 100 NFE)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddpm-dir", default=DEFAULT_OUTPUT_DIR, help="cache folder of the digits DDPM")
    parser.add_argument("--num-samples", type=int, default=256, help="samples per sampler (FD sample size)")
    parser.add_argument("--feature-steps", type=int, default=600, help="training steps of the feature CNN")
    parser.add_argument("--classifier-steps", type=int, default=1000, help="training steps of the noisy classifier")
    parser.add_argument("--classifier-dir", default=DEFAULT_CLASSIFIER_DIR, help="cache folder of the noisy classifier")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[3.0], help="one row per scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--low-nfe", action="store_true", help="run only issue 13's table at 10 and 20 evaluations")
    arguments = parser.parse_args()
    n, seed = arguments.num_samples, arguments.seed

    print(machine_description(), flush=True)
    ddpm = get_digits_ddpm(arguments.ddpm_dir)
    train_images, train_labels = load_digits_images(resolution=ddpm.unet.config.sample_size, split="train", seed=seed)
    test_images, test_labels = load_digits_images(resolution=ddpm.unet.config.sample_size, split="test", seed=seed)

    print("Training the feature CNN ...", flush=True)
    feature_cnn = train_feature_cnn(train_images, train_labels, arguments.feature_steps, seed)
    with torch.no_grad():
        reference_features = feature_cnn(train_images)[0]
        test_accuracy = float((feature_cnn(test_images)[1].argmax(1) == test_labels).float().mean())

    def fd_and_classes(samples: torch.Tensor) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            features, logits = feature_cnn(samples.clamp(-1, 1))
        return frechet_distance(features, reference_features), logits.argmax(1)

    rows = []
    # FD of (up to) n held-out real digits: the floor this sample size allows.
    with torch.no_grad():
        real_fd = frechet_distance(feature_cnn(test_images[:n])[0], reference_features)
    rows.append((f"real digits ({min(n, len(test_images))} of the held-out split)", "—", real_fd, float("nan")))
    if arguments.low_nfe:
        def fd_and_std(samples: torch.Tensor) -> tuple[float, float]:
            with torch.no_grad():
                features = feature_cnn(samples.clamp(-1, 1))[0]
            return frechet_distance(features, reference_features), bootstrap_fd_std(features, reference_features)

        with torch.no_grad():
            real_std = bootstrap_fd_std(feature_cnn(test_images[:n])[0], reference_features)
        print(f"\n{machine_description()}\nFeature CNN held-out accuracy {test_accuracy:.1%}; FD against the "
              f"{len(train_images)} training-split digits.")
        low_nfe_table(ddpm, n, seed, fd_and_std, (*rows[0][:2], real_fd, real_std, float("nan")))
        return

    print("Sampling: DDPMPipeline, 1000 steps ...", flush=True)
    samples, seconds = ddpm_baseline(ddpm, n, seed)
    ddpm_fd = fd_and_classes(samples)[0]
    rows.append(("Diffusers DDPMPipeline (DDPMScheduler, ancestral)", 1000, ddpm_fd, seconds / n))

    ddpm_config = ddpm.scheduler.config
    best_fd = float("inf")
    for name, (scheduler, num_inference_steps) in vp_schedulers(ddpm_config).items():
        print(f"Sampling: {name} ...", flush=True)
        pipe = ScoreGuidedPipeline(unet=ddpm.unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        samples, seconds = score_pipeline_samples(pipe, n, num_inference_steps, seed)
        fd = fd_and_classes(samples)[0]
        best_fd = min(best_fd, fd)
        rows.append((name, len(pipe.scheduler.timesteps), fd, seconds / n))

    classifier = get_noisy_classifier(
        ddpm, train_images, train_labels, arguments.classifier_steps, seed, arguments.classifier_dir
    )
    guided_scheduler = PredictorCorrectorScheduler.from_config(ddpm_config, predictor="ancestral", corrector="none")
    pipe = ScoreGuidedPipeline(unet=ddpm.unet, scheduler=guided_scheduler, classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    requested = torch.arange(n) % NUM_CLASSES
    print("Sampling: unguided and guided PC ancestral, 100 steps ...", flush=True)
    unguided, unguided_seconds = score_pipeline_samples(pipe, n, 100, seed)
    unguided_fd, unguided_classes = fd_and_classes(unguided)
    # Shares as exact fractions of n (a float32 mean reads 95 of 100 as 0.9499999).
    guided_rows = [("unguided", int((unguided_classes == requested).sum()) / n, unguided_fd, unguided_seconds)]
    for guidance_scale in arguments.guidance_scales:
        guided, seconds = score_pipeline_samples(
            pipe, n, 100, seed, class_labels=requested, guidance_scale=guidance_scale
        )
        guided_fd, guided_classes = fd_and_classes(guided)
        guided_rows.append(
            (f"guided, w = {guidance_scale}", int((guided_classes == requested).sum()) / n, guided_fd, seconds)
        )

    print()
    print(machine_description())
    print(f"\nDigits {ddpm.unet.config.sample_size}×{ddpm.unet.config.sample_size}, {n} samples per row, FD in the "
          f"32-dim features of a plain CNN (held-out accuracy {test_accuracy:.1%}) against the {len(train_images)} "
          "training-split digits.\n")
    print("| sampler | model evaluations | FD ↓ | s / sample |")
    print("| --- | ---: | ---: | ---: |")
    for name, evaluations, fd, per_sample in rows:
        print(f"| {name} | {evaluations} | {fd:.2f} | {per_sample:.3f} |")
    verdict = "met" if best_fd <= ddpm_fd else "NOT met"
    print(f"\nBar: best package VP sampler at ≤ 100 evaluations FD {best_fd:.2f} vs DDPMScheduler 1000-step "
          f"{ddpm_fd:.2f}: {verdict}.\n")

    print("Guidance (NoiseConditionalClassifier, PC ancestral, 100 model evaluations, classes 0…9 requested in turn; "
          "bars: ≥ 95% classified as requested, FD ≤ 1.5× unguided):\n")
    print("| | classified as requested | FD ↓ | FD / unguided | s / sample | time / unguided |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, accuracy, fd, seconds in guided_rows:
        bars = ""
        if name != "unguided":
            met = accuracy >= MIN_GUIDED_ACCURACY and fd / unguided_fd <= MAX_GUIDED_FD_RATIO
            bars = " (bars met)" if met else " (bars NOT met)"
        print(f"| {name}{bars} | {accuracy:.1%} | {fd:.2f} | {fd / unguided_fd:.2f} | {seconds / n:.3f} | "
              f"{seconds / unguided_seconds:.2f}× |")
    print("\nGuidance runs one classifier forward and backward per model evaluation; 'time / unguided' is the measured "
          "overhead.")
    plot_results(rows, guided_rows, [0.0, *arguments.guidance_scales], RESULTS / "pipeline_fd_vs_nfe.png")


if __name__ == "__main__":
    main()
