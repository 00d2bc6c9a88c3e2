"""Cost of classifier guidance per model evaluation, against the unguided pipeline and against an earlier commit.

Guidance adds w·∇ₓ log q_φ(y | x_t, t) at the σ of the scheduler's own grid entry, converting the gradient once into
the model's output units; the code before the convention layer converted ε → score → ε on every evaluation and found
σ by inverting the float32 timestep (a 60-step bisection for VP models fed σ). This script times
`ScoreGuidedPipeline` with a `NoiseConditionalClassifier`, guided and unguided, for this checkout and for the package
as it was at `--baseline` (extracted with `git archive` and imported under another name), in one process on the same
weights, inputs and seeds, in interleaved rounds; it also counts the time inversions each code path makes per model
evaluation.

Run from the repository root: `python benchmarks/bench_guidance.py` (~2 min). Each figure is a mean over rounds ±
its standard error.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

import score_diffusers

try:
    from machine import machine_description
except ImportError:
    from benchmarks.machine import machine_description

REPOSITORY = Path(__file__).resolve().parent.parent
# The last commit before the convention layer (the regression fixture was recorded on it).
DEFAULT_BASELINE = "ebb2fba"
BASELINE_PACKAGE = "score_diffusers_baseline"


def load_baseline(commit: str, folder: Path):
    """The package as it was at `commit`, importable as `score_diffusers_baseline` (its imports are relative)."""
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", commit, "score_diffusers"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "score_diffusers").rename(folder / BASELINE_PACKAGE)
    sys.path.insert(0, str(folder))
    return importlib.import_module(BASELINE_PACKAGE)


def make_pipeline(package, unet: UNet2DModel, classifier_state: dict, timestep_type: str):
    scheduler = package.PredictorCorrectorScheduler(
        sde_type="vp", prediction_type="epsilon", timestep_type=timestep_type, predictor="ancestral", corrector="none"
    )
    classifier = package.NoiseConditionalClassifier.from_unet(unet, num_classes=10, block_out_channels=(16, 32))
    classifier.load_state_dict(classifier_state)
    pipe = package.ScoreGuidedPipeline(unet=unet, scheduler=scheduler, classifier=classifier.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_inversions(package, pipe, steps: int) -> float:
    """Calls of the SDE's σ/α → t inversion per model evaluation in one guided run."""
    sde_class = type(pipe.scheduler.sde)
    original = sde_class.time_from_noise_to_signal
    calls = [0]

    def counted(self, ratio):
        calls[0] += 1
        return original(self, ratio)

    sde_class.time_from_noise_to_signal = counted
    try:
        pipe(batch_size=2, num_inference_steps=steps, class_labels=[1, 2], guidance_scale=2.0, output_type="pt")
    finally:
        sde_class.time_from_noise_to_signal = original
    return calls[0] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit of the earlier code to time against")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=20, help="model evaluations per sample")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    torch.manual_seed(1)
    classifier_state = score_diffusers.NoiseConditionalClassifier.from_unet(
        unet, num_classes=10, block_out_channels=(16, 32)
    ).state_dict()

    with tempfile.TemporaryDirectory() as folder:
        baseline = load_baseline(args.baseline, Path(folder))
        packages = {"this checkout": score_diffusers, f"baseline {args.baseline}": baseline}
        labels = torch.arange(args.batch_size) % 10
        print(machine_description())
        print()
        print(f"VP ε model, ancestral sampler, {args.steps} evaluations, batch {args.batch_size}, "
              f"{args.rounds} interleaved rounds")
        print()
        print("| timestep_type | code | σ → t inversions / eval (guided) | unguided s | guided s | guided / unguided |")
        print("|---|---|---:|---:|---:|---:|")
        for timestep_type in ("sigma", "discrete"):
            pipes = {name: make_pipeline(p, unet, classifier_state, timestep_type) for name, p in packages.items()}
            inversions = {name: count_inversions(packages[name], pipe, 3) for name, pipe in pipes.items()}
            seconds = {(name, guided): [] for name in pipes for guided in (False, True)}
            for round_index in range(args.rounds + 1):
                for name, pipe in pipes.items():
                    for guided in (False, True):
                        kwargs = {"class_labels": labels, "guidance_scale": 2.0} if guided else {}
                        generator = torch.Generator().manual_seed(round_index)
                        start = time.perf_counter()
                        pipe(batch_size=args.batch_size, num_inference_steps=args.steps, generator=generator,
                             output_type="pt", **kwargs)
                        if round_index:  # the first round warms up
                            seconds[name, guided].append(time.perf_counter() - start)
            for name in pipes:
                unguided, guided = seconds[name, False], seconds[name, True]
                ratios = [g / u for g, u in zip(guided, unguided)]

                def figure(values: list[float]) -> str:
                    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) / len(values) ** 0.5:.3f}"

                print(f"| {timestep_type} | {name} | {inversions[name]:g} | {figure(unguided)} | {figure(guided)} | "
                      f"{figure(ratios)} |")


if __name__ == "__main__":
    main()
