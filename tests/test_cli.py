"""The `score-diffusers` command, run in-process through `main(argv)` on a tiny DDPM saved by Diffusers itself."""

from __future__ import annotations

import json
import math
import runpy
import stat
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from diffusers import DDPMPipeline, DDPMScheduler

from helpers import tiny_unet
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
    names = sorted(path.name for path in output_dir.iterdir())
    assert names == ["0000.png", "0001.png", "0002.png"]
    for name in names:
        with PIL.Image.open(output_dir / name) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_sample_is_reproducible_per_image(ddpm_folder, tmp_path):
    """Image i depends on seed + i only: the second image of a batch seeded 0 is the first of a batch seeded 1."""
    common = ["sample", str(ddpm_folder), "--scheduler", "pf-euler", "--steps", "2", "--quiet"]
    assert main([*common, "--batch_size", "2", "--seed", "0", "--output_dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--batch_size", "1", "--seed", "1", "--output_dir", str(tmp_path / "b")]) == 0
    with PIL.Image.open(tmp_path / "a" / "0001.png") as first, PIL.Image.open(tmp_path / "b" / "0000.png") as second:
        np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_sample_needs_an_output(ddpm_folder, capsys):
    assert main(["sample", str(ddpm_folder)]) == 2
    assert "--grid" in error_line(capsys)


def test_guidance_without_a_classifier_is_a_clear_error(ddpm_folder, tmp_path, capsys):
    argv = ["sample", str(ddpm_folder), "--class_labels", "1", "--guidance_scale", "2"]
    assert main([*argv, "--grid", str(tmp_path / "g.png")]) == 2
    assert "classifier" in error_line(capsys)
    assert not (tmp_path / "g.png").exists()


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


def test_likelihood_refuses_the_wrong_image_size_unless_resized(ddpm_folder, tmp_path, capsys):
    write_images(tmp_path / "big", 2, size=2 * IMAGE_SIZE, mode="RGB")
    argv = ["likelihood", str(tmp_path / "big"), "--pipeline", str(ddpm_folder), *FAST_LIKELIHOOD]
    assert main(argv) == 2
    message = error_line(capsys)
    assert "16x16" in message and "8x8" in message and "--resize" in message
    # Resized to 8 × 8 and converted from RGB to the unet's one channel.
    assert main([*argv, "--resize"]) == 0
    assert "mean" in capsys.readouterr().out


# ---- help and errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["sample"], ["likelihood"], ["convert"]])
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
