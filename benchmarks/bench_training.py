#!/usr/bin/env python
"""Training throughput of the three training scripts against a minimal plain PyTorch loop.

For each script the script's own `main()` trains in-process (its default model and batch, EMA and clipping as the
script does) for `--steps` optimizer steps; then a plain loop trains the same architecture (same config, same
initial weights), on the same digits tensor, with the same batch, loss, AdamW, gradient clipping and EMA update,
written with nothing but PyTorch. Runs alternate script / plain `--repeats` times (the machine may be shared) and
the table reports the median images/s over the steps after `--warmup` steps.

    python benchmarks/bench_training.py --steps 20 --repeats 2

Prints a markdown table and saves `benchmarks/results/training_throughput.png` (images/s, script beside plain loop).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from diffusers import UNet2DModel

from score_diffusers import AnnealedLangevinScheduler, NoiseConditionalClassifier, ScoreGuidedPipeline
from score_diffusers.datasets import load_digits_images
from training.data import DIGITS_DEFAULT_RESOLUTION

try:
    from machine import machine_description
    from plotting import RESULTS, pyplot, save_figure
except ImportError:  # run as a module from the repository root
    from benchmarks.machine import machine_description
    from benchmarks.plotting import RESULTS, pyplot, save_figure


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO_ROOT / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, argv: list[str], warmup: int) -> tuple[float, object]:
    """images/s of the script's optimizer steps after `warmup`, and its result."""
    with contextlib.redirect_stderr(io.StringIO()):
        result = load_script(name).main(argv)
    seconds = sum(result.step_seconds[warmup:])
    batch = int(argv[argv.index("--train_batch_size") + 1])
    return batch * len(result.step_seconds[warmup:]) / seconds, result


def plain_loop(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_of: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
    steps: int,
    warmup: int,
    batch_size: int,
    use_ema: bool,
    lr: float = 1e-3,
) -> float:
    """A minimal loop: shuffled batches, loss, backward, clip, AdamW, EMA (foreach lerp). Returns images/s."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    ema = [p.detach().clone() for p in model.parameters()] if use_ema else None
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(images.shape[0], generator=generator)
    seconds = 0.0
    for step in range(steps):
        start = time.perf_counter()
        index = order[(step * batch_size) % (images.shape[0] - batch_size) :][:batch_size]
        loss = loss_of(model, images[index], labels[index], generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - 0.999)
        if step >= warmup:
            seconds += time.perf_counter() - start
    return batch_size * (steps - warmup) / seconds


def ncsn_plain_loss(sigmas: torch.Tensor):
    def loss_of(unet, x0, _labels, generator):
        sigma = sigmas[torch.randint(0, len(sigmas), (x0.shape[0],), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        score = unet(x0 + sigma[:, None, None, None] * noise, sigma).sample
        return (sigma[:, None, None, None] * score + noise).square().mean()

    return loss_of


def perturb_log_uniform(x0, sigma_min: float, sigma_max: float, generator):
    """x0 + σ·noise with σ = σ_min(σ_max/σ_min)^t, t ~ U[1e-5, 1]: the VE noise both plain loops train on."""
    t = 1e-5 + (1 - 1e-5) * torch.rand(x0.shape[0], generator=generator)
    sigma = sigma_min * (sigma_max / sigma_min) ** t
    noise = torch.randn(x0.shape, generator=generator)
    return x0 + sigma[:, None, None, None] * noise, sigma, noise


def ve_plain_loss(sigma_min: float, sigma_max: float):
    def loss_of(unet, x0, _labels, generator):
        noisy, sigma, noise = perturb_log_uniform(x0, sigma_min, sigma_max, generator)
        score = unet(noisy, sigma).sample
        return (sigma[:, None, None, None] * score + noise).square().mean()

    return loss_of


def classifier_plain_loss(sigma_min: float, sigma_max: float):
    def loss_of(classifier, x0, labels, generator):
        noisy, sigma, _ = perturb_log_uniform(x0, sigma_min, sigma_max, generator)
        return F.cross_entropy(classifier(noisy, sigma).logits, labels)

    return loss_of


def plain_counterpart(script: str, output_dir: Path, ncsn_dir: Path) -> tuple[torch.nn.Module, Callable]:
    """A freshly initialised model of the architecture the script saved, and the plain loss of that script."""
    ncsn_scheduler = AnnealedLangevinScheduler.from_pretrained(ncsn_dir, subfolder="scheduler")
    if script == "train_classifier":
        model = NoiseConditionalClassifier.from_config(NoiseConditionalClassifier.load_config(output_dir))
        return model.train(), classifier_plain_loss(ncsn_scheduler.config.sigma_min, ncsn_scheduler.config.sigma_max)
    model = UNet2DModel.from_config(UNet2DModel.load_config(output_dir, subfolder="unet")).train()
    if script == "train_ncsn":
        times = torch.linspace(1, 0, ncsn_scheduler.config.num_train_timesteps, dtype=torch.float64)
        return model, ncsn_plain_loss(ncsn_scheduler.sde.marginal_std(times).float())
    config = ScoreGuidedPipeline.from_pretrained(output_dir).scheduler.config
    return model, ve_plain_loss(config.sigma_min, config.sigma_max)


def load_average() -> str:
    """The machine may be shared: its 1, 5 and 15-minute load averages, printed beside the machine line."""
    return f"_Load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}._"


def plot_throughput(rows: list[dict], path: Path) -> None:
    """Grouped bars: images/s of each training script beside the plain PyTorch loop on the same model."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(2.6 * len(rows) + 2.5, 4.5))
    width = 0.38
    positions = list(range(len(rows)))
    series = ((-width / 2, "script_images_per_s", "script"), (width / 2, "plain_images_per_s", "plain PyTorch loop"))
    for offset, key, label in series:
        bars = axis.bar([x + offset for x in positions], [row[key] for row in rows], width, label=label)
        axis.bar_label(bars, fmt="%.0f", fontsize=8)
    axis.set_xticks(positions, [f"{row['script']}\n{row['ratio']:.2f}× the plain loop" for row in rows], fontsize=8)
    axis.set_ylabel("training images / s (median)")
    axis.set_title("Training throughput: script vs plain PyTorch loop")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps per measured run.")
    parser.add_argument("--warmup", type=int, default=3, help="Steps excluded from the timing.")
    parser.add_argument("--repeats", type=int, default=2, help="Alternating script / plain repetitions.")
    parser.add_argument("--batch_size", type=int, default=64, help="Training batch size of every run.")
    parser.add_argument("--json", type=str, default=None, help="Also write the results as JSON here.")
    parser.add_argument(
        "--only", type=str, nargs="+", default=None, help="Measure only these scripts (train_ncsn is always trained)."
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(machine_description())
    print(load_average())
    common_flags = [
        "--train_batch_size",
        str(args.batch_size),
        "--max_train_steps",
        str(args.steps),
        "--checkpointing_steps",
        "100000",
        "--logger",
        "none",
        "--num_grid_images",
        "1",
    ]
    rows = []
    # The scripts' own default data: the digits at DIGITS_DEFAULT_RESOLUTION.
    images, labels = load_digits_images(resolution=DIGITS_DEFAULT_RESOLUTION, split="train")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        ncsn_dir = scratch / "ncsn"
        # (row label, script, its arguments, the plain loop's loss for the same model, whether the script keeps an EMA)
        specs = [
            ("train_ncsn.py", "train_ncsn", ["--output_dir", str(ncsn_dir), "--steps_per_level", "1"], True),
            (
                "train_score_sde.py (VE, score)",
                "train_score_sde",
                ["--output_dir", str(scratch / "ve"), "--sde", "ve", "--num_inference_steps", "2"],
                True,
            ),
            (
                "train_classifier.py",
                "train_classifier",
                [
                    "--output_dir",
                    str(scratch / "clf"),
                    "--pretrained_model_name_or_path",
                    str(ncsn_dir),
                    "--num_eval_levels",
                    "1",
                ],
                False,
            ),
        ]
        for label, script, argv, use_ema in specs:
            if args.only and script not in args.only:
                if script == "train_ncsn":  # the classifier needs a pipeline to train on; the last flag wins
                    run_script(script, [*argv, *common_flags, "--max_train_steps", "2"], 0)
                continue
            script_rates, plain_rates = [], []
            for _ in range(args.repeats):
                rate, _ = run_script(script, [*argv, *common_flags], args.warmup)
                script_rates.append(rate)
                model, loss_of = plain_counterpart(script, Path(argv[1]), ncsn_dir)
                plain_rates.append(
                    plain_loop(model, images, labels, loss_of, args.steps, args.warmup, args.batch_size, use_ema)
                )
            script_rate, plain_rate = statistics.median(script_rates), statistics.median(plain_rates)
            rows.append(
                {
                    "script": label,
                    "script_images_per_s": script_rate,
                    "plain_images_per_s": plain_rate,
                    "ratio": script_rate / plain_rate,
                    "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                }
            )

    print(f"\nbatch {args.batch_size}, {args.steps} steps ({args.warmup} warm-up excluded), median of {args.repeats}\n")
    print("| script | model params | script images/s | plain PyTorch images/s | ratio |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['script']} | {row['params_M']:.2f} M | {row['script_images_per_s']:.1f} | "
            f"{row['plain_images_per_s']:.1f} | {row['ratio']:.2f}× |"
        )
    print(f"\n{machine_description()}\n{load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if rows:
        plot_throughput(rows, RESULTS / "training_throughput.png")


if __name__ == "__main__":
    main()
