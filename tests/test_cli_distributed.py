"""`score-diffusers sample` and `likelihood` over many images and many processes: the work split in batches, the
resume of a killed `sample`, and 2-process `accelerate launch` runs that give the same outputs as 1 process."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from diffusers import DDPMPipeline, DDPMScheduler

from helpers import tiny_unet
from score_diffusers import cli
from score_diffusers.cli import SAMPLE_RECORD_NAME, main
from score_diffusers.distributed import Processes, batches

IMAGE_SIZE = 8
# Five images in batches of two: batches [0, 1], [2, 3], [4]; with two processes rank 0 takes the first and the last.
NUM_IMAGES, BATCH_SIZE = 5, 2
SAMPLE = ["--num_images", str(NUM_IMAGES), "--batch_size", str(BATCH_SIZE), "--scheduler", "pf-euler", "--steps", "3",
          "--seed", "7", "--quiet"]
# An adaptive solver at loose tolerances: a few dozen evaluations a chunk, and chunks of different lengths.
LIKELIHOOD = ["--batch_size", str(BATCH_SIZE), "--method", "dopri5", "--rtol", "1e-3", "--atol", "1e-3",
              "--num_probes", "2", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    """A tiny DDPM saved by Diffusers' own `DDPMPipeline.save_pretrained`."""
    folder = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=tiny_unet(sample_size=IMAGE_SIZE), scheduler=DDPMScheduler(num_train_timesteps=100)) \
        .save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """`NUM_IMAGES` random 8-bit grey images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(NUM_IMAGES):
        PIL.Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), mode="L") \
            .save(folder / f"img{index}.png")
    return folder


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    """The in-process runs are one process, whatever launched pytest."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def pngs(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` (hidden ones too, but the run's settings record) with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.name != SAMPLE_RECORD_NAME}


def read_csv(path: Path) -> dict[str, float]:
    with open(path, newline="") as file:
        return {row["file"]: float(row["bits_per_dim"]) for row in csv.DictReader(file)}


# ---- the split -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_the_processes_share_whole_batches_and_every_index_once(world_size):
    work = batches(NUM_IMAGES, BATCH_SIZE)
    assert work == [range(0, 2), range(2, 4), range(4, 5)]
    shares = [Processes(rank, world_size).share(work) for rank in range(world_size)]
    assert sorted(index for share in shares for batch in share for index in batch) == list(range(NUM_IMAGES))
    # Batch k on process k mod W: the batches themselves never change with W.
    assert all(batch in work for share in shares for batch in share)
    assert shares[0][0] == range(0, 2)


def test_processes_come_from_the_launchers_environment(monkeypatch):
    assert Processes.from_environment() == Processes(rank=0, world_size=1, local_rank=0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    processes = Processes.from_environment()
    assert processes == Processes(rank=3, world_size=4, local_rank=1) and not processes.is_main


# ---- sample: many images, npz, resume --------------------------------------------------------------------------------


def test_sample_writes_many_images_and_an_npz_and_resumes(pipeline_folder, tmp_path, capsys):
    output_dir, npz = tmp_path / "images", tmp_path / "all.npz"
    argv = ["sample", str(pipeline_folder), *SAMPLE, "--output_dir", str(output_dir), "--npz", str(npz)]
    assert main(argv) == 0
    assert f"Sampled {NUM_IMAGES} images" in capsys.readouterr().out
    first = pngs(output_dir)
    assert list(first) == [f"{index:04d}.png" for index in range(NUM_IMAGES)]
    with np.load(npz) as loaded:
        stacked = loaded["arr_0"]
    assert stacked.dtype == np.uint8 and stacked.shape == (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 1)
    for index in range(NUM_IMAGES):
        with PIL.Image.open(output_dir / f"{index:04d}.png") as image:
            np.testing.assert_array_equal(stacked[index, ..., 0], np.asarray(image))

    # A killed run: one write that never finished (its partial file, no PNG), and one PNG cut short by other means.
    (output_dir / "0003.png").rename(output_dir / ".0003.png.partial")
    (output_dir / ".0003.png.partial").write_bytes(first["0003.png"][:40])
    (output_dir / "0000.png").write_bytes(first["0000.png"][:40])
    npz.unlink()
    assert main(argv) == 0
    out = capsys.readouterr().out
    # Batch [4] is whole and skipped; batches [0, 1] and [2, 3] are sampled again, and only 0000 and 0003 written.
    assert f"Sampled 2 images ({NUM_IMAGES - 2} already in {output_dir})" in out
    assert pngs(output_dir) == first
    with np.load(npz) as loaded:
        np.testing.assert_array_equal(loaded["arr_0"], stacked)


def test_sample_without_an_output_dir_writes_the_npz_from_memory(pipeline_folder, tmp_path):
    assert main(["sample", str(pipeline_folder), *SAMPLE, "--output_dir", str(tmp_path / "png")]) == 0
    assert main(["sample", str(pipeline_folder), *SAMPLE, "--npz", str(tmp_path / "only.npz")]) == 0
    with np.load(tmp_path / "only.npz") as loaded:
        for index, image in enumerate(loaded["arr_0"]):
            with PIL.Image.open(tmp_path / "png" / f"{index:04d}.png") as png:
                np.testing.assert_array_equal(image[..., 0], np.asarray(png))


def test_a_write_that_fails_leaves_neither_the_png_nor_its_partial(tmp_path, monkeypatch):
    def save_then_die(self, target, *args, **kwargs):
        Path(target).write_bytes(b"half a PNG")
        raise KeyboardInterrupt

    monkeypatch.setattr(PIL.Image.Image, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cli._save_png_atomically(PIL.Image.new("L", (2, 2)), tmp_path / "0000.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [(["--class_labels", "1", "2"], "one per image (5)"), (["--npz", "x.zip"], "must end in .npz"),
     (["--npz", "."], "it is a folder")],
)
def test_sample_bad_new_options_exit_2_before_loading(extra, message, tmp_path, monkeypatch, capsys):
    def load_pipeline(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the options were checked")

    monkeypatch.setattr(cli, "load_pipeline", load_pipeline)
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "P", *SAMPLE, "--output_dir", "out", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command, options", [("sample", ["--num_images", "--npz", "accelerate launch", "resume"]),
                                              ("likelihood", ["--csv", "accelerate launch", "per chunk"])])
def test_help_names_the_new_options(command, options, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(option in text for option in options)


# ---- two processes ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Both commands in one launch, through the command's own `main`: one start of two processes instead of two.
DRIVER = """
import json, sys
from score_diffusers.cli import main
sys.exit(max(main(argv) for argv in json.loads(sys.argv[1])))
"""


def accelerate_launch(commands: list[list[str]], cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch` on 2 CPU processes (`--multi_gpu` is accelerate's torchrun launcher, which runs on CPU
    too; `--cpu` would start one process), one thread each, of a script that runs `main(argv)` for each command."""
    (cwd / "driver.py").write_text(DRIVER)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        environment.pop(name, None)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "driver.py", json.dumps(commands)]
    return subprocess.run(launch, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_two_processes_give_the_same_images_and_bits_per_dim_as_one(pipeline_folder, image_folder, tmp_path, capsys):
    pytest.importorskip("accelerate")
    sample = ["sample", str(pipeline_folder), *SAMPLE]
    likelihood = ["likelihood", str(image_folder), "--pipeline", str(pipeline_folder), *LIKELIHOOD]
    assert main([*sample, "--output_dir", str(tmp_path / "one"), "--npz", str(tmp_path / "one.npz")]) == 0
    assert main([*likelihood, "--csv", str(tmp_path / "one.csv")]) == 0
    capsys.readouterr()

    run = accelerate_launch(
        [[*sample, "--output_dir", "two", "--npz", "two.npz"], [*likelihood, "--csv", "two.csv"]], tmp_path
    )
    assert run.returncode == 0, run.stderr[:4000]
    assert "on 2 processes" in run.stdout and run.stdout.count("Sampled") == 1  # the main process reports
    assert pngs(tmp_path / "two") == pngs(tmp_path / "one")
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()

    # Rank 0 solved chunks [0, 1] and [4], rank 1 chunk [2, 3]: different numbers of solver steps, no hang.
    per_process = run.stdout.split("per process: ")[1].split(")")[0].split(", ")
    assert len(per_process) == 2 and per_process[0] != per_process[1]
    one, two = read_csv(tmp_path / "one.csv"), read_csv(tmp_path / "two.csv")
    assert list(two) == list(one) == [f"img{index}.png" for index in range(NUM_IMAGES)]
    np.testing.assert_allclose(list(two.values()), list(one.values()), rtol=0, atol=1e-6)
