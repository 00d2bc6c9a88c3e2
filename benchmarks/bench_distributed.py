"""Issue 15's many-process bar: `score-diffusers sample` and `likelihood` under a 2-process `accelerate launch`,
against the same command as 1 process: identical outputs, and the wall-time ratio.

Each run is the whole command as a user starts it, Python start-up and model loading included: 1 process is
`python -m score_diffusers ...`, 2 processes are
`accelerate launch --multi_gpu --num_processes 2 -m score_diffusers ...` (`--multi_gpu` is accelerate's torchrun
launcher, which runs on CPU too). Every process has one thread (`OMP_NUM_THREADS=1`), so 2 processes may use twice
the cores. The runs alternate 1, 2, 1, 2, ... and the table gives the mean ± standard error of the wall time over
`--repeats` pairs and the ratio of the means (its standard error by the delta method), and the same ratio of the CPU
time of all the command's processes (near 1 when the work is split, not repeated; above 1 by the second process's
start-up and the launcher). "identical" compares every PNG and the `.npz` byte for byte, and the largest
|difference| in bits/dim of the `--csv` files.

The model is the digits DDPM (`benchmarks/digits_ddpm.py`, 16×16, trained once and cached under
`benchmarks/results/digits_ddpm`); the likelihood images are held-out test digits written as PNGs.

Run from the repository root: `python benchmarks/bench_distributed.py` (`--repeats 3 --num-images 32 ...`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_ddpm import DEFAULT_OUTPUT_DIR, get_digits_ddpm  # noqa: E402
from machine import machine_description  # noqa: E402

from score_diffusers.datasets import load_digits_images  # noqa: E402


COMMANDS = ("start-up", "sample", "likelihood")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(argv: list[str], num_processes: int) -> list[str]:
    """`python -m score_diffusers ARGV` for 1 process, its `accelerate launch` for more."""
    if num_processes == 1:
        return [sys.executable, "-m", "score_diffusers", *argv]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "score_diffusers", *argv]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(argv: list[str], num_processes: int, cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all its processes, the launcher's too) of the command; raises with its stderr
    if it fails."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        environment.pop(name, None)
    start, cpu_start = time.perf_counter(), children_cpu_seconds()
    run = subprocess.run(command(argv, num_processes), cwd=cwd, env=environment, capture_output=True, text=True)
    seconds, cpu_seconds = time.perf_counter() - start, children_cpu_seconds() - cpu_start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} with {num_processes} processes failed:\n{run.stderr[-3000:]}")
    return seconds, cpu_seconds


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan)


def ratio_and_stderr(numerator: list[float], denominator: list[float]) -> tuple[float, float]:
    """mean(numerator) / mean(denominator) and its standard error (delta method, independent runs)."""
    (a, sa), (b, sb) = mean_and_stderr(numerator), mean_and_stderr(denominator)
    return a / b, a / b * math.sqrt((sa / a) ** 2 + (sb / b) ** 2)


def files_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def bits_per_dim(path: Path) -> dict[str, float]:
    with open(path, newline="") as file:
        return {row["file"]: float(row["bits_per_dim"]) for row in csv.DictReader(file)}


def measure(
    args: argparse.Namespace, pipeline: str, work: Path
) -> tuple[dict[tuple[str, int], list[float]], dict[tuple[str, int], list[float]], dict[str, str]]:
    """Run each command `args.repeats` times with 1 and 2 processes in `work`: wall and CPU seconds per
    (command, process count), and whether the 2-process outputs equal the 1-process ones."""
    images, _ = load_digits_images(split="test")
    (work / "digits").mkdir()
    for index, image in enumerate(images[: args.num_test_images]):
        pixels = ((image[0].numpy() + 1) * 127.5).round().astype(np.uint8)
        PIL.Image.fromarray(pixels, mode="L").save(work / "digits" / f"digit{index:03d}.png")

    sample = ["sample", pipeline, "--scheduler", "pf-euler", "--steps", str(args.steps), "--num_images",
              str(args.num_images), "--batch_size", str(args.sample_batch_size), "--quiet"]
    likelihood = ["likelihood", str(work / "digits"), "--pipeline", pipeline, "--batch_size",
                  str(args.likelihood_batch_size), "--quiet"]
    times: dict[tuple[str, int], list[float]] = {}
    cpu_times: dict[tuple[str, int], list[float]] = {}
    identical: dict[str, str] = {}
    startup = ["sample", pipeline, "--scheduler", "pf-euler", "--steps", "1", "--num_images", "1", "--quiet"]
    runs = {"start-up": startup, "sample": sample, "likelihood": likelihood}
    for name in args.commands:
        argv = runs[name]
        for repeat in range(args.repeats):
            for num_processes in (1, 2):
                out = work / f"{name}-{num_processes}-{repeat}"
                outputs = (["--csv", f"{out}.csv"] if name == "likelihood"
                           else ["--output_dir", str(out), "--npz", f"{out}.npz"])
                seconds, cpu_seconds = timed_run([*argv, *outputs], num_processes, work)
                times.setdefault((name, num_processes), []).append(seconds)
                cpu_times.setdefault((name, num_processes), []).append(cpu_seconds)
                print(f"{name}, {num_processes} process(es), run {repeat + 1}: {seconds:.1f} s "
                      f"({cpu_seconds:.1f} CPU s)", flush=True)
        one, two = work / f"{name}-1-0", work / f"{name}-2-0"
        if name != "likelihood":
            same = files_bytes(one) == files_bytes(two) and Path(f"{one}.npz").read_bytes() == Path(
                f"{two}.npz").read_bytes()
            identical[name] = f"{'yes' if same else 'NO'}: {len(files_bytes(one))} PNGs and the .npz, byte for byte"
        else:
            a, b = bits_per_dim(Path(f"{one}.csv")), bits_per_dim(Path(f"{two}.csv"))
            assert list(a) == list(b)
            difference = max(abs(a[key] - b[key]) for key in a)
            identical[name] = f"max \\|Δ bits/dim\\| = {difference:.1e} over {len(a)} images"

    return times, cpu_times, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of 1- and 2-process runs per command")
    parser.add_argument("--num-images", type=int, default=256, help="images to sample")
    parser.add_argument("--sample-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="pf-euler steps of sample")
    parser.add_argument("--num-test-images", type=int, default=16, help="test digits whose bits/dim are computed")
    parser.add_argument("--likelihood-batch-size", type=int, default=4)
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS),
                        help="start-up: sample of 1 image in 1 step, the cost of starting the processes")
    args = parser.parse_args()

    get_digits_ddpm()  # trains and caches it on the first run
    pipeline = os.path.abspath(DEFAULT_OUTPUT_DIR)
    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        times, cpu_times, identical = measure(args, pipeline, work)
    finally:  # the runs' images, .npz and .csv files are only compared, not kept
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"sample: {args.num_images} images, pf-euler {args.steps} steps, batches of {args.sample_batch_size}; "
          f"likelihood: {args.num_test_images} test digits, dopri5 rtol = atol = 1e-5, Hutchinson (1 probe), "
          f"chunks of {args.likelihood_batch_size}; {args.repeats} runs each.")
    print()
    print("| command | wall, 1 process (s) | wall, 2 processes (s) | wall ratio 2 / 1 | CPU ratio 2 / 1 | "
          "identical to 1 process |")
    print("|---|---|---|---|---|---|")
    for name in args.commands:
        (m1, s1), (m2, s2) = mean_and_stderr(times[(name, 1)]), mean_and_stderr(times[(name, 2)])
        ratio, ratio_stderr = ratio_and_stderr(times[(name, 2)], times[(name, 1)])
        cpu_ratio, cpu_ratio_stderr = ratio_and_stderr(cpu_times[(name, 2)], cpu_times[(name, 1)])
        print(f"| {name} | {m1:.1f} ± {s1:.1f} | {m2:.1f} ± {s2:.1f} | {ratio:.2f} ± {ratio_stderr:.2f} | "
              f"{cpu_ratio:.2f} ± {cpu_ratio_stderr:.2f} | {identical[name]} |")
    print()
    print(machine_description())


if __name__ == "__main__":
    main()
