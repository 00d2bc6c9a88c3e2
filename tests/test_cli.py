"""The `score-diffusers` command, run in-process through `main(argv)` on a tiny DDPM saved by Diffusers itself."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from diffusers import DDPMPipeline, DDPMScheduler

from helpers import tiny_unet
from score_diffusers import cli
from score_diffusers.cli import SCHEDULERS, main
from score_diffusers.image_grid import GRID_GUTTER, GRID_MIN_WIDTH

IMAGE_SIZE = 8
NUM_TRAIN_TIMESTEPS = 100
# Loose tolerances and a fixed-grid solver keep the likelihood runs at a handful of model evaluations.
FAST_LIKELIHOOD = ["--method", "euler", "--num_steps", "3", "--quiet"]


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory) -> Path:
    """A tiny DDPM saved by Diffusers' own `DDPMPipeline.save_pretrained`."""
    folder = tmp_path_factory.mktemp("ddpm")
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    DDPMPipeline(unet=tiny_unet(sample_size=IMAGE_SIZE), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted_folder(ddpm_folder, tmp_path_factory) -> Path:
    """`ddpm_folder` converted to a ScoreGuidedPipeline with the ancestral predictor-corrector scheduler."""
    output = tmp_path_factory.mktemp("converted") / "pipeline"
    assert main(["convert", str(ddpm_folder), str(output), "--scheduler", "pc-ancestral"]) == 0
    return output


def write_images(folder: Path, count: int, size: int = IMAGE_SIZE, mode: str = "L") -> list[str]:
    """`count` random 8-bit images `size` × `size` as PNGs; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for index in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"img{index}.png")
        names.append(f"img{index}.png")
    return names


def scheduler_class_name(pipeline_folder: Path) -> str:
    return json.loads((pipeline_folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]


def error_line(capsys) -> str:
    """The error line of a failed command: the last line on stderr (progress bars of loading may come before)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ---- convert ---------------------------------------------------------------------------------------------------------


def test_convert_saves_a_score_guided_pipeline_with_the_chosen_scheduler(converted_folder):
    model_index = json.loads((converted_folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "ScoreGuidedPipeline"
    assert scheduler_class_name(converted_folder) == "PredictorCorrectorScheduler"
    config = json.loads((converted_folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["predictor"] == "ancestral" and config["sde_type"] == "vp"
    assert config["num_train_timesteps"] == NUM_TRAIN_TIMESTEPS
    # Nothing left beside it from the temporary folder, whose permissions are those of a plain `mkdir`.
    assert [path.name for path in converted_folder.parent.iterdir()] == [converted_folder.name]
    plain = converted_folder.parent / "plain"
    plain.mkdir()
    assert stat.S_IMODE(converted_folder.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    plain.rmdir()


def test_convert_refuses_to_replace_an_existing_folder_unless_asked(ddpm_folder, tmp_path, capsys):
    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("good")
    assert main(["convert", str(ddpm_folder), str(output)]) == 2
    assert "--overwrite" in error_line(capsys)
    assert (output / "keep.txt").read_text() == "good"

    assert main(["convert", str(ddpm_folder), str(output), "--scheduler", "pf-euler", "--overwrite"]) == 0
    assert not (output / "keep.txt").exists() and scheduler_class_name(output) == "ProbabilityFlowScheduler"
    assert [path.name for path in tmp_path.iterdir()] == ["existing"]


def test_failed_convert_leaves_the_existing_folder_untouched(ddpm_folder, tmp_path, capsys):
    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("good")
    # A VP checkpoint cannot run annealed Langevin dynamics (VE only): the error comes before anything is written.
    assert main(["convert", str(ddpm_folder), str(output), "--scheduler", "annealed-langevin", "--overwrite"]) == 2
    assert "ve" in error_line(capsys)
    assert (output / "keep.txt").read_text() == "good"
    assert [path.name for path in tmp_path.iterdir()] == ["existing"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below `folder`, hidden ones included, by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    "output, message",
    [("nest", "holds DDPM_FOLDER"), ("nest/ddpm", "is DDPM_FOLDER"), ("nest/ddpm/converted", "is inside DDPM_FOLDER"),
     (".", "is the current folder")],
    ids=["output-holds-source", "output-is-source", "output-inside-source", "output-is-current-folder"],
)
def test_convert_refuses_an_output_whose_replacement_would_delete_the_source(
    output, message, ddpm_folder, tmp_path, monkeypatch, capsys
):
    """Before: `convert nest/ddpm nest --overwrite` exited 0 after deleting nest/ddpm and nest/notes.txt, and
    `convert ddpm . --overwrite` failed leaving a staging copy in the current folder. Now refused, nothing written."""
    shutil.copytree(ddpm_folder, tmp_path / "nest" / "ddpm")
    (tmp_path / "nest" / "notes.txt").write_text("unrelated")
    monkeypatch.chdir(tmp_path / "nest" if output == "." else tmp_path)
    source = str(tmp_path / "nest" / "ddpm") if output == "." else "nest/ddpm"
    before = tree(tmp_path)
    assert main(["convert", source, output, "--overwrite"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"score-diffusers: error: OUTPUT_FOLDER {output} {message}")
    assert tree(tmp_path) == before


def test_convert_replaces_without_an_atomic_exchange_too(ddpm_folder, tmp_path, monkeypatch):
    """Where the filesystem cannot swap two folders in one step, the old folder goes to a backup and then away."""
    monkeypatch.setattr(cli, "_exchange", lambda first, second: False)
    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("old")
    assert main(["convert", str(ddpm_folder), str(output), "--scheduler", "pf-euler", "--overwrite"]) == 0
    assert scheduler_class_name(output) == "ProbabilityFlowScheduler" and not (output / "keep.txt").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["existing"]


# Run in a child process: replace `output` the two-rename way and SIGKILL itself right after the first rename.
KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import score_diffusers.cli as cli
cli._exchange = lambda first, second: False
rename = Path.rename
def rename_then_die(self, target):
    result = rename(self, target)
    if Path(target).name.endswith(".backup"):
        os.kill(os.getpid(), signal.SIGKILL)
    return result
Path.rename = rename_then_die
cli.main(sys.argv[1:])
"""


def test_a_convert_killed_between_its_renames_is_recovered_by_the_next(ddpm_folder, tmp_path, capsys):
    """Before: a kill between the two renames left no output folder, only hidden copies, and nothing found them.
    Now the old folder is a known backup beside it that the next convert renames back, saying so."""
    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("old")
    argv = ["convert", str(ddpm_folder), str(output), "--overwrite"]
    command = [sys.executable, "-c", KILLED_BETWEEN_RENAMES, *argv]
    child = subprocess.run(command, capture_output=True, timeout=300, check=False)
    assert child.returncode == -signal.SIGKILL
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left[0] == ".existing.backup" and left[1].startswith(".existing.partial-") and len(left) == 2

    # Without --overwrite: the old folder is restored, then kept (the command refuses to replace it).
    assert main(argv[:-1]) == 2
    err = capsys.readouterr().err
    assert "restored" in err and ".existing.backup" in err and "deleted .existing.partial-" in err
    assert (output / "keep.txt").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["existing"]


def test_convert_deletes_what_a_save_killed_after_its_exchange_left(ddpm_folder, tmp_path, capsys):
    """A kill after the atomic exchange leaves the new folder in place and the old one in a staging folder."""
    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("new")
    (tmp_path / ".existing.partial-0123").mkdir()
    (tmp_path / ".existing.partial-0123" / "old.txt").write_text("old")
    (tmp_path / ".existing.backup").mkdir()
    assert main(["convert", str(ddpm_folder), str(output)]) == 2
    err = capsys.readouterr().err
    assert "deleted .existing.partial-0123" in err and "deleted .existing.backup" in err
    assert (output / "keep.txt").read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["existing"]


# ---- sample ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, scheduler, expected_class",
    [
        ("ddpm", "keep", "ProbabilityFlowScheduler"),
        ("ddpm", "pc", "PredictorCorrectorScheduler"),
        ("converted", "keep", "PredictorCorrectorScheduler"),
        ("converted", "pf-euler", "ProbabilityFlowScheduler"),
    ],
)
def test_sample_writes_a_grid_and_individual_images(
    source, scheduler, expected_class, ddpm_folder, converted_folder, tmp_path, capsys
):
    folder = {"ddpm": ddpm_folder, "converted": converted_folder}[source]
    grid, output_dir = tmp_path / "grid.png", tmp_path / "images"
    argv = ["sample", str(folder), "--scheduler", scheduler, "--steps", "2", "--batch_size", "3", "--seed", "5"]
    assert main([*argv, "--grid", str(grid), "--output_dir", str(output_dir), "--quiet"]) == 0
    assert expected_class in capsys.readouterr().out

    with PIL.Image.open(grid) as image:
        # Three images in a near-square grid, 2 columns × 2 rows, upscaled to at least GRID_MIN_WIDTH with gutters.
        scale = math.ceil(GRID_MIN_WIDTH / (2 * IMAGE_SIZE))
        side = 2 * (IMAGE_SIZE * scale + GRID_GUTTER) + GRID_GUTTER
        assert image.size == (side, side) and image.mode == "L"
    names = sorted(path.name for path in output_dir.glob("*.png"))
    assert names == ["0000.png", "0001.png", "0002.png"]
    for name in names:
        with PIL.Image.open(output_dir / name) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)


# Every registry sampler that takes the DDPM folder's VP model (annealed Langevin is VE only).
VP_SCHEDULER_NAMES = sorted(name for name, recipe in SCHEDULERS.items()
                            if "vp" in recipe.scheduler_class._supported_sde_types)


@pytest.mark.parametrize("scheduler", VP_SCHEDULER_NAMES)
def test_sample_is_reproducible_per_image(scheduler, ddpm_folder, tmp_path):
    """Image i depends on seed + i only, for every sampler at its defaults: image 0 of a batch of 3 seeded 0 is the
    image of a batch of 1 seeded 0, and image 1 is that of a batch of 1 seeded 1 (to one 8-bit level: the unet's
    batched float32 convolutions may round a pixel across a level)."""
    common = ["sample", str(ddpm_folder), "--scheduler", scheduler, "--steps", "3", "--quiet"]
    assert main([*common, "--batch_size", "3", "--seed", "0", "--output_dir", str(tmp_path / "batch")]) == 0
    for seed in (0, 1):
        alone = tmp_path / f"alone{seed}"
        assert main([*common, "--batch_size", "1", "--seed", str(seed), "--output_dir", str(alone)]) == 0
        with PIL.Image.open(tmp_path / "batch" / f"{seed:04d}.png") as in_batch:
            with PIL.Image.open(alone / "0000.png") as one:
                difference = np.abs(np.asarray(in_batch, dtype=int) - np.asarray(one, dtype=int))
        assert difference.max() <= 1, f"{scheduler}: image {seed} differs by {difference.max()} levels"


def test_sample_needs_an_output(ddpm_folder, capsys):
    assert main(["sample", str(ddpm_folder)]) == 2
    assert "--grid" in error_line(capsys)


def test_guidance_without_a_classifier_is_a_clear_error(ddpm_folder, tmp_path, capsys):
    argv = ["sample", str(ddpm_folder), "--class_labels", "1", "--guidance_scale", "2"]
    assert main([*argv, "--grid", str(tmp_path / "g.png")]) == 2
    assert "classifier" in error_line(capsys)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda tmp: ["sample", "P", "--output_dir", str(tmp / "file.txt")], "it exists and is not a folder"),
        (lambda tmp: ["sample", "P", "--output_dir", str(tmp / "file.txt" / "images")], "Not a directory"),
        (lambda tmp: ["sample", "P", "--grid", str(tmp / "file.txt" / "grid.png")], "the folder of --grid"),
        (lambda tmp: ["sample", "P", "--grid", str(tmp / "grid.unknown")], "no image format"),
        (lambda tmp: ["sample", "P", "--grid", str(tmp)], "it is a folder"),
        (lambda tmp: ["convert", "P", str(tmp / "file.txt" / "out")], "the folder of OUTPUT_FOLDER"),
    ],
    ids=["output-dir-is-a-file", "output-dir-under-a-file", "grid-under-a-file", "grid-suffix", "grid-is-a-folder",
         "convert-under-a-file"],
)
def test_unwritable_outputs_are_refused_before_any_sampling(make_argv, message, tmp_path, monkeypatch, capsys):
    """Before: output paths were checked after sampling, so an unwritable one threw the samples away."""
    (tmp_path / "file.txt").write_text("a file, not a folder")

    def load_pipeline(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the output path was checked")

    monkeypatch.setattr(cli, "load_pipeline", load_pipeline)
    assert main(make_argv(tmp_path)) == 2
    line = error_line(capsys)
    assert line.startswith("score-diffusers: error: cannot write") and message in line


def test_sample_creates_its_output_dir_before_sampling(tmp_path, monkeypatch):
    created = []

    def load_pipeline(*args, **kwargs):
        created.append((tmp_path / "a" / "b").is_dir())
        raise cli.CLIError("stop here")

    monkeypatch.setattr(cli, "load_pipeline", load_pipeline)
    assert main(["sample", "P", "--output_dir", str(tmp_path / "a" / "b")]) == 2
    assert created == [True]


# ---- likelihood ------------------------------------------------------------------------------------------------------


def test_likelihood_prints_bits_per_dim_per_image_and_the_mean(converted_folder, tmp_path, capsys):
    names = write_images(tmp_path / "images", 3)
    argv = ["likelihood", str(tmp_path / "images"), "--pipeline", str(converted_folder), *FAST_LIKELIHOOD]
    assert main([*argv, "--divergence", "exact"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["file", "bits/dim"]
    rows = dict(line.split() for line in lines[1:5])
    assert sorted(rows) == sorted([*names, "mean"])
    values = [float(rows[name]) for name in names]
    assert all(np.isfinite(values)) and all(value > 0 for value in values)
    assert float(rows["mean"]) == pytest.approx(np.mean(values), abs=1e-4)
    assert "evaluations" in lines[-1]

    # Hutchinson with several probes adds a standard-error column.
    assert main([*argv, "--divergence", "hutchinson", "--num_probes", "2", "--no-dequantize"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "stderr" in lines[0] and len(lines[1].split()) == 3

    # The log-σ̄ Adams–Bashforth mode through the command line: 3 RK4 steps (12 evaluations), then 1 per step.
    argv = ["likelihood", str(tmp_path / "images"), "--pipeline", str(converted_folder), "--quiet"]
    assert main([*argv, "--method", "ab4", "--num_steps", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(np.isfinite(float(line.split()[1])) for line in lines[1:5]) and "14 evaluations" in lines[-1]
    assert lines[-2].startswith("Largest solver error estimate: ")


def test_likelihood_refuses_the_wrong_image_size_unless_resized(ddpm_folder, tmp_path, capsys):
    write_images(tmp_path / "big", 2, size=2 * IMAGE_SIZE, mode="RGB")
    argv = ["likelihood", str(tmp_path / "big"), "--pipeline", str(ddpm_folder), *FAST_LIKELIHOOD]
    assert main(argv) == 2
    message = error_line(capsys)
    assert "16x16" in message and "8x8" in message and "--resize" in message
    # Resized to 8 × 8 and converted from RGB to the unet's one channel.
    assert main([*argv, "--resize"]) == 0
    assert "mean" in capsys.readouterr().out


# ---- inpaint and edit ------------------------------------------------------------------------------------------------


def write_mask(path: Path, values: np.ndarray) -> Path:
    PIL.Image.fromarray(np.uint8(values * 255), mode="L").save(path)
    return path


@pytest.mark.parametrize("method", ["smc", "replacement"])
def test_inpaint_writes_one_png_per_image_keeping_the_black_pixels(method, ddpm_folder, tmp_path, capsys):
    names = write_images(tmp_path / "in", 2)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    mask[IMAGE_SIZE // 2:] = 1  # generate the bottom half
    write_mask(tmp_path / "mask.png", mask)
    argv = ["inpaint", str(ddpm_folder), *(str(tmp_path / "in" / name) for name in names), "--mask",
            str(tmp_path / "mask.png"), "--method", method, "--steps", "3", "--particles", "2", "--output_dir",
            str(tmp_path / "out"), "--grid", str(tmp_path / "grid.png"), "--quiet"]
    assert main(argv) == 0
    assert "model evaluations per image" in capsys.readouterr().out
    for name in names:
        original = np.asarray(PIL.Image.open(tmp_path / "in" / name))
        result = np.asarray(PIL.Image.open(tmp_path / "out" / name))
        np.testing.assert_allclose(result[: IMAGE_SIZE // 2], original[: IMAGE_SIZE // 2], atol=1)
    assert (tmp_path / "grid.png").is_file()
    # The same seed gives the same images.
    assert main([*argv[:-5], "--output_dir", str(tmp_path / "again"), "--quiet"]) == 0
    for name in names:
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "out" / name)),
                              np.asarray(PIL.Image.open(tmp_path / "again" / name)))


def test_edit_writes_one_png_per_image(ddpm_folder, tmp_path, capsys):
    names = write_images(tmp_path / "in", 2)
    argv = ["edit", str(ddpm_folder), *(str(tmp_path / "in" / name) for name in names), "--strength", "0.5",
            "--steps", "4", "--output_dir", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0
    assert "strength 0.5" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(names)


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda ddpm, tmp: ["inpaint", str(ddpm), str(tmp / "in" / "img0.png"), "--mask", str(tmp / "gray.png"),
                            "--output_dir", str(tmp / "out")], "binary"),
        (lambda ddpm, tmp: ["inpaint", str(ddpm), str(tmp / "in" / "img0.png"), "--mask", str(tmp / "missing.png"),
                            "--output_dir", str(tmp / "out")], "no image file"),
        (lambda ddpm, tmp: ["inpaint", str(ddpm), str(tmp / "in" / "img0.png"), "--mask", str(tmp / "mask.png")],
         "nothing to write"),
        (lambda ddpm, tmp: ["inpaint", str(ddpm), str(tmp / "in" / "img0.png"), "--mask", str(tmp / "mask.png"),
                            "--method", "dps", "--output_dir", str(tmp / "out")], "invalid choice: 'dps'"),
        (lambda ddpm, tmp: ["inpaint", str(ddpm), str(tmp / "in" / "img0.png"), "--mask", str(tmp / "small.png"),
                            "--output_dir", str(tmp / "out")], "--resize"),
        (lambda ddpm, tmp: ["edit", str(ddpm), str(tmp / "in" / "img0.png"), "--strength", "1.5",
                            "--output_dir", str(tmp / "out")], "strength"),
        (lambda ddpm, tmp: ["edit", str(ddpm), str(tmp / "in" / "img0.png"), "--strength", "0.01",
                            "--output_dir", str(tmp / "out")], "runs no step"),
        (lambda ddpm, tmp: ["edit", str(ddpm), str(tmp / "in" / "missing.png"), "--output_dir", str(tmp / "out")],
         "no image file"),
    ],
    ids=["gray-mask", "missing-mask", "no-output", "unknown-method", "mask-size", "strength-range", "no-step",
         "missing-image"],
)
def test_inpaint_and_edit_bad_input_exits_2(make_argv, message, ddpm_folder, tmp_path, capsys):
    write_images(tmp_path / "in", 1)
    write_mask(tmp_path / "mask.png", np.ones((IMAGE_SIZE, IMAGE_SIZE)))
    write_mask(tmp_path / "gray.png", np.full((IMAGE_SIZE, IMAGE_SIZE), 0.5))
    write_mask(tmp_path / "small.png", np.ones((4, 4)))
    assert main(make_argv(ddpm_folder, tmp_path)) == 2
    line = error_line(capsys)
    assert line.startswith("score-diffusers: error: ") and message in line


# ---- help and errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["sample"], ["likelihood"], ["convert"], ["inpaint"], ["edit"]])
def test_help_exits_0_and_lists_the_schedulers(command, capsys):
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert f"usage: score-diffusers {' '.join(command)}".strip() in text
    if command != ["likelihood"]:  # likelihood uses the pipeline's own scheduler
        assert all(name in text for name in SCHEDULERS)


def test_python_dash_m_runs_the_command(monkeypatch, capsys):
    """`python -m score_diffusers`, run in-process (a subprocess would import torch and Diffusers again)."""
    monkeypatch.setattr(sys, "argv", ["score-diffusers", "convert", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("score_diffusers", run_name="__main__")
    assert exit_info.value.code == 0 and "OUTPUT_FOLDER" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda ddpm, tmp: ["sample", str(tmp / "missing"), "--grid", str(tmp / "g.png")], "no such pipeline folder"),
        (lambda ddpm, tmp: ["convert", str(tmp / "missing"), str(tmp / "out")], "no such pipeline folder"),
        (lambda ddpm, tmp: ["likelihood", str(tmp / "missing"), "--pipeline", str(ddpm)], "no such image folder"),
        (lambda ddpm, tmp: ["sample", str(tmp), "--grid", str(tmp / "g.png")], "no model_index.json"),
        (lambda ddpm, tmp: ["sample", str(ddpm), "--scheduler", "dpm++"], "invalid choice: 'dpm++'"),
        (lambda ddpm, tmp: ["convert", str(ddpm), str(tmp / "out"), "--scheduler", "euler"], "invalid choice"),
        (lambda ddpm, tmp: ["likelihood", str(tmp), "--pipeline", str(ddpm)], "no images"),
        (lambda ddpm, tmp: ["sample", str(ddpm), "--steps", "0"], "--steps"),
        (lambda ddpm, tmp: [], "required: COMMAND"),
    ],
    ids=[
        "missing-pipeline", "missing-ddpm", "missing-images", "not-a-pipeline", "unknown-scheduler",
        "unknown-convert-scheduler", "empty-image-folder", "bad-steps", "no-command",
    ],
)
def test_bad_input_exits_2_with_one_clear_line(make_argv, message, ddpm_folder, tmp_path, capsys):
    assert main(make_argv(ddpm_folder, tmp_path)) == 2
    line = error_line(capsys)
    assert line.startswith("score-diffusers: error: ") and message in line


def test_export_code_and_convert_with_code_write_the_stock_diffusers_files(ddpm_folder, tmp_path, capsys):
    output = tmp_path / "converted"
    assert main(["convert", str(ddpm_folder), str(output), "--with_code"]) == 0
    assert (output / "pipeline_score_guided.py").is_file()
    assert any(output.glob("score_diffusers_bundle_*.py"))
    plain = tmp_path / "plain"
    assert main(["convert", str(ddpm_folder), str(plain)]) == 0
    assert not (plain / "pipeline_score_guided.py").exists()
    capsys.readouterr()
    assert main(["export-code", str(plain)]) == 0
    assert 'custom_pipeline="pipeline_score_guided"' in capsys.readouterr().out
    assert (plain / "pipeline_score_guided.py").is_file()
    assert main(["export-code", str(tmp_path / "missing")]) == 2


def test_sample_with_the_adaptive_solver(ddpm_folder, tmp_path, capsys):
    """`--adaptive` samples with the adaptive-step solver, reports its evaluations per image, and keeps image i a
    function of seed + i."""
    common = ["sample", str(ddpm_folder), "--adaptive", "--quiet"]
    assert main([*common, "--batch_size", "2", "--seed", "0", "--output_dir", str(tmp_path / "batch")]) == 0
    out = capsys.readouterr().out
    assert "adaptive reverse-SDE solver at rtol 0.2" in out and "model evaluations per image on average" in out
    assert main([*common, "--batch_size", "1", "--seed", "1", "--output_dir", str(tmp_path / "alone")]) == 0
    with PIL.Image.open(tmp_path / "batch" / "0001.png") as in_batch:
        with PIL.Image.open(tmp_path / "alone" / "0000.png") as one:
            difference = np.abs(np.asarray(in_batch, dtype=int) - np.asarray(one, dtype=int))
    assert difference.max() <= 1


@pytest.mark.parametrize("extra, message", [(["--adaptive", "0"], "--adaptive"), (["--adaptive", "--scheduler", "pc"],
                                                                                 "--adaptive chooses its own steps")])
def test_bad_adaptive_options_are_usage_errors(extra, message, ddpm_folder, tmp_path, capsys):
    argv = ["sample", str(ddpm_folder), *extra, "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sample_grid_alone_and_a_rerun_with_nothing_left_to_sample(ddpm_folder, tmp_path, capsys):
    """A grid without --output_dir is built from the images in memory; a rerun whose images are all on disk samples
    nothing and still writes the grid."""
    common = ["sample", str(ddpm_folder), "--steps", "2", "--batch_size", "2", "--quiet"]
    assert main([*common, "--grid", str(tmp_path / "alone.png")]) == 0
    assert (tmp_path / "alone.png").is_file()
    argv = [*common, "--output_dir", str(tmp_path / "out"), "--grid", str(tmp_path / "grid.png")]
    assert main(argv) == 0
    (tmp_path / "grid.png").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert "Sampled 0 images (2 already in" in capsys.readouterr().out
    assert (tmp_path / "grid.png").is_file()


@pytest.mark.parametrize("changed", [["--seed", "1"], ["--steps", "3"], ["--scheduler", "pc"]])
def test_a_rerun_with_other_settings_does_not_mix_its_images_in(changed, ddpm_folder, tmp_path, capsys):
    common = ["sample", str(ddpm_folder), "--batch_size", "1", "--output_dir", str(tmp_path / "out"), "--quiet"]
    assert main([*common, "--steps", "2", "--num_images", "1"]) == 0
    settings = {"--steps": "2", **dict(zip(changed[::2], changed[1::2]))}
    argv = [*common, *[item for pair in settings.items() for item in pair], "--num_images", "2"]
    assert main(argv) == 2
    assert "holds the images of a run with other settings" in error_line(capsys)
    assert sorted(path.name for path in (tmp_path / "out").glob("*.png")) == ["0000.png"]
    # The same settings resume, the pipeline's folder spelled another way too.
    respelled = ["sample", f"{ddpm_folder}/.", *common[2:]]
    assert main([*respelled, "--steps", "2", "--num_images", "2"]) == 0
