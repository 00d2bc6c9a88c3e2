"""Inpainting test digits with a DDPM of the train split: does a classifier read the true label from the completions?

A DDPM trained on the digits' train split only (`digits_ddpm.py --split train`, cached) completes the test digits
with the bottom half masked, by `ScoreInpaintPipeline` with each method at equal model evaluations per image:
twisted SMC (16 particles × 50 steps), score_sde's replacement on the predictor-corrector sampler and measurement
guidance on the probability flow (both at 800 evaluations). A classifier trained separately on the clean train split
(scikit-learn's logistic regression on the pixels) then labels the completions; its accuracy is compared with its
accuracy on the real full test digits and on the masked digits with the bottom half left black (what the top half
alone tells it). Accuracies are over the test split ± their binomial standard error. A grid of completions (rows:
original, masked input, each method) is written to `benchmarks/results/inpainting_digits.png`.

Run from the repository root: `python benchmarks/bench_inpainting_digits.py` (trains the DDPM once, ~12 min, then
~15 min on 2 CPU cores; `--num_images` takes the first N test digits).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from score_diffusers import ScoreInpaintPipeline
from score_diffusers.datasets import load_digits_images
from score_diffusers.image_grid import image_grid
from score_diffusers.schedulers import build_scheduler

try:
    from digits_ddpm import TRAIN_SPLIT_OUTPUT_DIR, get_digits_ddpm
    from machine import machine_description
except ImportError:
    from benchmarks.digits_ddpm import TRAIN_SPLIT_OUTPUT_DIR, get_digits_ddpm
    from benchmarks.machine import machine_description

RESOLUTION = 16
PARTICLES, SMC_STEPS = 16, 50
EVALUATIONS = PARTICLES * SMC_STEPS
GRID_DIGITS = 10
GRID_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "inpainting_digits.png")


def accuracy(classifier: LogisticRegression, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy of `classifier` on images in [0, 1] of shape (n, 1, h, w), and its binomial standard error."""
    predicted = classifier.predict((images * 2 - 1).reshape(len(images), -1).numpy())
    correct = float(np.mean(predicted == labels.numpy()))
    return correct, math.sqrt(correct * (1 - correct) / len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=None, help="first N test digits (default: all)")
    parser.add_argument("--batch_size", type=int, default=40, help="images per pipeline call")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (more than the free cores "
                        "slows every call down)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_description())
    ddpm = get_digits_ddpm(TRAIN_SPLIT_OUTPUT_DIR, split="train")
    train_images, train_labels = load_digits_images(RESOLUTION, split="train")
    test_images, test_labels = load_digits_images(RESOLUTION, split="test")
    if args.num_images is not None:
        test_images, test_labels = test_images[: args.num_images], test_labels[: args.num_images]
    classifier = LogisticRegression(max_iter=2000, C=0.1)
    classifier.fit(train_images.reshape(len(train_images), -1).numpy(), train_labels.numpy())

    images = (test_images + 1) / 2  # [0, 1], as the pipeline takes them
    mask = torch.zeros(1, 1, RESOLUTION, RESOLUTION)
    mask[..., RESOLUTION // 2:, :] = 1  # white = generate the bottom half
    masked = images * (1 - mask)
    pc = build_scheduler("pc", {**ddpm.scheduler.config, "_class_name": type(ddpm.scheduler).__name__})
    methods = {
        f"smc, {PARTICLES} particles × {SMC_STEPS} steps": ("smc", None, SMC_STEPS),
        f"replacement, PC, {EVALUATIONS} evaluations": ("replacement", pc, EVALUATIONS // pc.order),
        f"guidance, probability flow (Heun), {EVALUATIONS} evaluations": ("guidance", None, EVALUATIONS // 2),
    }
    rows = [("real full test digits", "—", *accuracy(classifier, images, test_labels), 0.0),
            ("top half only (bottom black)", "—", *accuracy(classifier, masked, test_labels), 0.0)]
    completions = {}
    for name, (method, scheduler, steps) in methods.items():
        components = {"scheduler": scheduler} if scheduler is not None else {}
        pipe = ScoreInpaintPipeline(unet=ddpm.unet, scheduler=components.get("scheduler", ddpm.scheduler))
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        outputs, nfe = [], 0
        for first in range(0, len(images), args.batch_size):
            batch = images[first:first + args.batch_size]
            generators = [torch.Generator().manual_seed(first + i) for i in range(len(batch))]
            out = pipe(batch, mask, method=method, num_inference_steps=steps, num_particles=PARTICLES,
                       generator=generators, output_type="pt")
            outputs.append(out.images)
            nfe = out.nfe
        completions[name] = torch.cat(outputs)
        seconds = (time.perf_counter() - start) / len(images)
        rows.append((name, str(nfe), *accuracy(classifier, completions[name], test_labels), seconds))
        print(f"  {name}: done ({seconds:.2f} s per image)", flush=True)

    print(f"\n### Inpainting the bottom half of {len(images)} test digits (DDPM of the train split)\n")
    print("| input to the classifier | NFE per image | accuracy | seconds per image |")
    print("|---|---:|---:|---:|")
    for name, nfe, value, error, seconds in rows:
        print(f"| {name} | {nfe} | {value:.3f} ± {error:.3f} | {seconds:.2f} |")

    grid_rows = [images[:GRID_DIGITS], masked[:GRID_DIGITS]] + [c[:GRID_DIGITS] for c in completions.values()]
    pil = ScoreInpaintPipeline.numpy_to_pil(torch.cat(grid_rows).permute(0, 2, 3, 1).numpy())
    os.makedirs(os.path.dirname(GRID_PATH), exist_ok=True)
    image_grid(pil, GRID_DIGITS).save(GRID_PATH)
    print(f"\nGrid (rows: original, masked, {', '.join(methods)}): {GRID_PATH}")


if __name__ == "__main__":
    main()
