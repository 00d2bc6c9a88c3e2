"""End-to-end tests of the training scripts: tiny models, a few steps, through `accelerate launch` in subprocesses.

Each script trains at 8×8 on the bundled digits; outputs load with `ScoreGuidedPipeline.from_pretrained` and the unet
with Diffusers' own `UNet2DModel.from_pretrained`. Resumption is checked bit-for-bit against an uninterrupted run,
a 2-process CPU run goes through `accelerate launch --multi_gpu` with `ACCELERATE_USE_CPU=1` (torchrun + gloo),
and `--push_to_hub` runs in-process with the Hub client's functions replaced by recorders (no network).
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from score_diffusers import (
    AnnealedLangevinScheduler,
    NoiseConditionalClassifier,
    ProbabilityFlowScheduler,
    ScoreGuidedPipeline,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING = REPO_ROOT / "training"
# The scripts' shared modules, imported as the scripts import them: `training` from the repository root.
sys.path.insert(0, str(REPO_ROOT))

from training import arguments  # noqa: E402
from training.data import load_image_data, prepare_training_data  # noqa: E402
from training.unet import add_unet_arguments  # noqa: E402

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--num_cpu_threads_per_process",
    "1",
]
TINY = [
    "--resolution",
    "8",
    "--block_out_channels",
    "16",
    "32",
    "--no-attention",
    "--train_batch_size",
    "16",
    "--num_grid_images",
    "4",
    "--learning_rate",
    "1e-3",
    "--lr_warmup_steps",
    "0",
]
# The NCSN run that the resume test repeats: 4 steps, a checkpoint every 2.
NCSN_RUN = [
    *TINY,
    "--max_train_steps",
    "4",
    "--checkpointing_steps",
    "2",
    "--num_noise_levels",
    "6",
    "--steps_per_level",
    "1",
]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SUBPROCESS_TIMEOUT_S = 300


def launch(script: str, args: list[str], num_processes: int = 1) -> subprocess.CompletedProcess:
    """Run `accelerate launch training/<script> <args>` offline; return the finished process (output captured)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if num_processes > 1:
        # Accelerate's CPU multi-process path: torchrun processes joined by gloo.
        env["ACCELERATE_USE_CPU"] = "1"
        launcher = [*LAUNCH, "--multi_gpu", "--num_processes", str(num_processes)]
    else:
        launcher = [*LAUNCH, "--num_processes", "1"]
    return subprocess.run(
        [*launcher, str(TRAINING / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def check_ok(process: subprocess.CompletedProcess) -> str:
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-6000:]
    return output


def load_script(name: str):
    """Import training/<name>.py as a module (for in-process runs)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", TRAINING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- NCSN: a run with checkpoints, its outputs, and an exact resume -------------------------------------------------


@pytest.fixture(scope="module")
def ncsn_run(tmp_path_factory) -> tuple[Path, str]:
    output_dir = tmp_path_factory.mktemp("ncsn") / "out"
    process = launch(
        "train_ncsn.py",
        [
            "--output_dir",
            str(output_dir),
            *NCSN_RUN,
        ],
    )
    return output_dir, check_ok(process)


def test_ncsn_output_loads_with_diffusers(ncsn_run):
    output_dir, log = ncsn_run
    unet = UNet2DModel.from_pretrained(output_dir, subfolder="unet")
    assert (
        unet.config.time_embedding_type == "fourier" and unet.config.sample_size == 8 and unet.config.in_channels == 1
    )

    pipe = ScoreGuidedPipeline.from_pretrained(output_dir)
    scheduler = pipe.scheduler
    assert isinstance(scheduler, AnnealedLangevinScheduler)
    assert scheduler.config.timestep_type == "sigma" and scheduler.config.num_train_timesteps == 6
    # σ_max defaults to the largest pairwise distance of the 8×8 digits in [−1, 1] (a few units, far above σ_min).
    assert 1.0 < scheduler.config.sigma_max < 16.0 and scheduler.config.sigma_min == 0.01
    images = pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 8, 8, 1)

    # The unet's output is the score: the Fourier embedding divides by the σ it is fed.
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        small, large = (unet(x, torch.full((2,), sigma)).sample.abs().mean() for sigma in (0.05, 5.0))
    assert small > 10 * large

    for name in ("README.md", "samples.png", "samples/step_000002.png", "model_index.json", "checkpoint-2/ema"):
        assert (output_dir / name).exists(), name
    assert sorted(p.name for p in output_dir.glob("*checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert list((output_dir / "logs").rglob("events.out.tfevents.*")), "no TensorBoard scalars"
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "diffusers"
    assert {"score-based", "pytorch", "diffusers:ScoreGuidedPipeline"} <= set(card.data.tags)
    assert "ScoreGuidedPipeline.from_pretrained" in card.text and "samples.png" in card.text
    assert "noise levels from σ_max" in log


def test_ncsn_resume_latest_replays_the_uninterrupted_run(ncsn_run, tmp_path):
    output_dir, _ = ncsn_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(output_dir / "checkpoint-2", resumed / "checkpoint-2")
    # An interrupted save leaves only a partial folder; "latest" must ignore it.
    (resumed / ".checkpoint-3.partial").mkdir()
    process = launch(
        "train_ncsn.py",
        [
            "--output_dir",
            str(resumed),
            *NCSN_RUN,
            "--resume_from_checkpoint",
            "latest",
        ],
    )
    log = check_ok(process)
    assert "Resuming from" in log and "checkpoint-2 (step 2)" in log
    expected, actual = load_file(output_dir / UNET_WEIGHTS), load_file(resumed / UNET_WEIGHTS)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


# ---- score SDE: two processes, VP ε with likelihood weighting → a DDPM-compatible checkpoint ----------------------


def test_score_sde_two_processes_vp_epsilon_is_ddpm_compatible(tmp_path):
    output_dir = tmp_path / "vp"
    process = launch(
        "train_score_sde.py",
        [
            "--output_dir",
            str(output_dir),
            *TINY,
            "--sde",
            "vp",
            "--prediction_type",
            "epsilon",
            "--weighting",
            "likelihood",
            "--importance_sampling",
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--num_inference_steps",
            "2",
            "--train_batch_size",
            "8",
        ],
        num_processes=2,
    )
    log = check_ok(process)
    assert "Num processes: 2" in log and "MULTI_CPU" in log
    assert "2 process(es)" in (output_dir / "README.md").read_text()
    assert (output_dir / "checkpoint-2" / "random_states_1.pkl").exists()

    pipe = ScoreGuidedPipeline.from_pretrained(output_dir)
    assert isinstance(pipe.scheduler, ProbabilityFlowScheduler)
    assert (pipe.scheduler.config.sde_type, pipe.scheduler.config.prediction_type) == ("vp", "epsilon")
    assert pipe.scheduler.config.timestep_type == "discrete"
    unet = UNet2DModel.from_pretrained(output_dir, subfolder="unet")
    assert unet.config.time_embedding_type == "positional"
    ddpm = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02))
    ddpm.set_progress_bar_config(disable=True)
    images = ddpm(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (1, 8, 8, 1)
    assert "DDPMPipeline(unet=unet" in (output_dir / "README.md").read_text()


def test_importance_sampler_matches_the_likelihood_weighted_objective():
    """E_q[w(t)·f(t)] with t ~ q must equal E_U[g²/σ²·f(t)] (same objective, other time law)."""
    module = load_script("train_score_sde")
    from score_diffusers import VPSDE

    sde, eps = VPSDE(), 1e-5
    sampler = module.ImportanceTimeSampler(sde, eps, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    t, weight = sampler.sample(200_000, generator)
    assert float(t.min()) >= eps and float(t.max()) <= 1
    f = torch.sin(3 * t) + 1.5
    grid = torch.linspace(eps, 1, 200_001, dtype=torch.float64)
    exact = torch.trapezoid(module.likelihood_density(sde, grid) * (torch.sin(3 * grid) + 1.5), grid) / (1 - eps)
    assert float((weight * f).mean()) == pytest.approx(float(exact), rel=0.02)
    # The weight is (nearly) constant: that is the variance reduction.
    assert float(weight.std() / weight.mean()) < 0.05


# ---- classifier on the NCSN pipeline's noise process ------------------------------------------------------------


def test_classifier_trains_on_the_pipeline_noise_and_attaches(ncsn_run, tmp_path):
    pipeline_dir, _ = ncsn_run
    output_dir = tmp_path / "guided"
    process = launch(
        "train_classifier.py",
        [
            "--output_dir",
            str(output_dir),
            "--pretrained_model_name_or_path",
            str(pipeline_dir),
            "--block_out_channels",
            "16",
            "32",
            "--train_batch_size",
            "32",
            "--max_train_steps",
            "3",
            "--num_eval_levels",
            "3",
            "--save_pipeline",
            "--num_grid_images",
            "2",
            "--num_inference_steps",
            "2",
            "--logger",
            "none",
        ],
    )
    log = check_ok(process)
    assert "Held-out accuracy per noise level" in log
    classifier = NoiseConditionalClassifier.from_pretrained(output_dir, subfolder="classifier")
    assert classifier.config.time_embedding_type == "fourier" and classifier.config.num_classes == 10
    pipe = ScoreGuidedPipeline.from_pretrained(output_dir)
    assert isinstance(pipe.classifier, NoiseConditionalClassifier)
    rows = __import__("json").loads((output_dir / "accuracy_per_noise_level.json").read_text())
    assert len(rows) == 3 and all(0 <= row["accuracy"] <= 1 for row in rows)
    card = ModelCard.load(output_dir / "README.md")
    assert "classifier-guidance" in card.data.tags and "| accuracy |" in card.text


# ---- Hub upload, recorded --------------------------------------------------------------------------------------------


def test_push_to_hub_uploads_the_folder_with_its_card(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def create_repo(repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls.append(("upload_folder", repo_id, {**kwargs, "files": files, "folder_path": folder_path}))

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    output_dir = tmp_path / "ve"
    load_script("train_score_sde").main(
        [
            "--output_dir",
            str(output_dir),
            *TINY,
            "--sde",
            "ve",
            "--max_train_steps",
            "1",
            "--num_inference_steps",
            "2",
            "--push_to_hub",
            "--hub_model_id",
            "someone/tiny-ve",
            "--hub_token",
            "hf_recorded",
            "--logger",
            "none",
        ]
    )
    assert [call[0] for call in calls] == ["create_repo", "upload_folder"]
    (_, repo_id, create_kwargs), (_, upload_repo, upload_kwargs) = calls
    assert repo_id == upload_repo == "someone/tiny-ve" and create_kwargs["exist_ok"]
    assert create_kwargs["token"] == upload_kwargs["token"] == "hf_recorded"
    assert Path(upload_kwargs["folder_path"]) == output_dir
    for name in ("README.md", "model_index.json", "samples.png", UNET_WEIGHTS, "scheduler/scheduler_config.json"):
        assert name in upload_kwargs["files"], name
    assert any(pattern.startswith("checkpoint-") for pattern in upload_kwargs["ignore_patterns"])
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "diffusers"
    assert {"score-based", "pytorch", "diffusers:ScoreGuidedPipeline", "ve-sde"} <= set(card.data.tags)
    assert 'ScoreGuidedPipeline.from_pretrained("someone/tiny-ve")' in card.text
    assert '"sde": "ve"' in card.text and "![Samples" in card.text


# ---- bad arguments fail before training --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train_ncsn", ["--train_data_dir", "/no/such/folder"], "does not exist"),
        ("train_ncsn", ["--resolution", "10", "--block_out_channels", "16", "32", "64"], "not divisible"),
        ("train_ncsn", ["--block_out_channels", "8", "8", "8", "8", "8", "8"], "not divisible"),
        ("train_score_sde", ["--sde", "vpp"], "invalid choice: 'vpp'"),
        ("train_score_sde", ["--weighting", "elbo"], "invalid choice: 'elbo'"),
        ("train_ncsn", ["--max_train_steps", "0"], "--max_train_steps must be >= 1; got 0"),
        # Before: -1 pruned every checkpoint, the one just written included.
        ("train_ncsn", ["--checkpoints_total_limit", "-1"], "--checkpoints_total_limit must be >= 1; got -1"),
        ("train_score_sde", ["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be >= 1; got 0"),
        ("train_score_sde", ["--importance_sampling"], "--importance_sampling needs --weighting likelihood"),
        ("train_score_sde", ["--num_inference_steps", "0"], "--num_inference_steps must be >= 1"),
        ("train_classifier", ["--pretrained_model_name_or_path", "/"], "is not a saved pipeline folder"),
        # Before: a traceback from AdamW after the output folder was made (NaN, negative), or silently accepted
        # (a learning rate of 0 trains nothing; --ema_max_decay 2, --max_grad_norm nan or -1, --lr_warmup_steps -1).
        ("train_ncsn", ["--learning_rate", "nan"], "`--learning_rate` must be a number > 0 (finite); got nan"),
        ("train_score_sde", ["--learning_rate", "0"], "`--learning_rate` must be a number > 0 (finite); got 0.0"),
        ("train_classifier", ["--pretrained_model_name_or_path", "/", "--adam_beta1", "1.5"],
         "`--adam_beta1` must be a number in [0, 1); got 1.5"),
        ("train_ncsn", ["--adam_epsilon", "-1"], "`--adam_epsilon` must be a number >= 0 (finite)"),
        ("train_ncsn", ["--use_ema", "--ema_max_decay", "2"], "`--ema_max_decay` must be a number in [0, 1]; got 2.0"),
        ("train_ncsn", ["--ema_power", "-1"], "`--ema_power` must be a number > 0"),
        ("train_score_sde", ["--max_grad_norm", "nan"], "`--max_grad_norm` must be a number >= 0 (finite); got nan"),
        ("train_ncsn", ["--lr_warmup_steps", "-1"], "--lr_warmup_steps must be >= 0; got -1"),
        ("train_ncsn", ["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0; got -1"),
        # Before: NumPy's "Seed must be between 0 and 2**32 - 1", naming no flag.
        ("train_ncsn", ["--seed", "-1"], "--seed must lie in [0, 4294967295]; got -1"),
        # Before: OverflowError (NCSN) / silently accepted (VP with an infinite β).
        ("train_ncsn", ["--sigma_max", "inf"], "`--sigma_max` must be a number > 0 (finite)"),
        ("train_score_sde", ["--sigma_max", "inf"], "`--sigma_max` must be a number > 0 (finite)"),
        ("train_score_sde", ["--sde", "vp", "--beta_max", "inf"], "`--beta_max` must be a number >= 0 (finite)"),
        ("train_score_sde", ["--prediction_type", "epsilon", "--num_train_timesteps", "1"],
         "--num_train_timesteps must be >= 2 for --prediction_type epsilon"),
        # Before: refused only after the output folder was made.
        ("train_ncsn", ["--step_size", "nan"], "`step_size` must be a number > 0 (finite)"),
        # Before: FileNotFoundError from TensorBoard's writer after the output folder was made.
        ("train_ncsn", ["--logging_dir", "/proc/1/logs"], "--logging_dir '/proc/1/logs' is not writable"),
        # Before: Diffusers' "neither a valid local path nor a valid repo id", after a Hub lookup.
        ("train_classifier", ["--pretrained_model_name_or_path", "/no/such/pipeline"],
         "--pretrained_model_name_or_path '/no/such/pipeline' does not exist"),
    ],
)
def test_bad_arguments_fail_before_training(script, args, message, tmp_path, capsys):
    """Exit status 2 and `error: <message>` on stderr, as argparse reports a bad flag, with no output written."""
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        load_script(script).main(["--output_dir", str(output_dir), *args])
    assert raised.value.code == 2
    stderr = capsys.readouterr().err
    assert "error: " in stderr and message in stderr
    assert not output_dir.exists()


@pytest.mark.parametrize("script", ["train_ncsn", "train_score_sde"])
def test_a_new_run_in_a_folder_with_checkpoints_is_refused(script, tmp_path, capsys):
    """A new run would prune an earlier run's checkpoints at its first save: it stops before training, naming them,
    and the checkpoint is left as it was."""
    checkpoint = tmp_path / "checkpoint-500"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(SystemExit) as raised:
        load_script(script).main(["--output_dir", str(tmp_path)])
    assert raised.value.code == 2
    assert "holds the checkpoints of an earlier run (steps 500)" in capsys.readouterr().err
    assert (checkpoint / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("script", ["train_ncsn", "train_score_sde", "train_classifier"])
def test_an_output_dir_that_cannot_be_written_fails_before_training(script, tmp_path, capsys):
    """Before: `FileExistsError` / `NotADirectoryError` / `PermissionError` tracebacks (and a folder that exists but
    cannot be written in failed only at the first checkpoint)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    extra = ["--pretrained_model_name_or_path", str(tmp_path)] if script == "train_classifier" else []
    for output_dir, message in (
        (a_file, f"--output_dir '{a_file}' exists and is not a folder"),
        (a_file / "out", f"--output_dir '{a_file / 'out'}' cannot be created: '{a_file}' is not a folder"),
        # Writable by no one, root included.
        (Path("/proc/1/out"), "--output_dir '/proc/1/out' is not writable"),
    ):
        with pytest.raises(SystemExit) as raised:
            load_script(script).main(["--output_dir", str(output_dir), *extra])
        assert raised.value.code == 2 and message in capsys.readouterr().err
    assert a_file.read_text() == "not a folder"


def _image_folder(root: Path, bad: str) -> Path:
    """Twenty 8×8 gray PNGs and one bad image: a zero-byte file, text, a truncated PNG or JPEG, 16-bit or float
    pixels."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    for index in range(20):
        Image.fromarray(np.full((8, 8), 10 * index, dtype=np.uint8)).save(root / f"{index}.png")
    if bad == "empty-file":
        (root / "bad.png").write_bytes(b"")
    elif bad == "text":
        (root / "bad.png").write_text("not an image")
    elif bad == "truncated":
        whole = (root / "0.png").read_bytes()
        (root / "bad.png").write_bytes(whole[: len(whole) // 2])
    elif bad == "truncated-jpeg":
        # Noise, so that half the file is past the headers: PIL's `verify` passes it, reading no pixels.
        noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
        Image.fromarray(noise).save(root / "whole.jpg")
        whole = (root / "whole.jpg").read_bytes()
        (root / "whole.jpg").unlink()
        (root / "bad.jpg").write_bytes(whole[: len(whole) // 2])
    elif bad == "16-bit":
        Image.fromarray(np.full((8, 8), 40_000, dtype=np.uint16)).save(root / "bad.png")
    elif bad == "float":
        Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), "F").save(root / "bad.tiff")
    return root


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        # Before: PIL's UnidentifiedImageError at the first batch that held it, after the output folder was made.
        ("empty-file", "of 21 images, 1 cannot be read as images: {root}/bad.png (UnidentifiedImageError"),
        ("text", "of 21 images, 1 cannot be read as images: {root}/bad.png (UnidentifiedImageError"),
        # Before: `OSError: image file is truncated` (a traceback) when it was first read.
        ("truncated", "of 21 images, 1 cannot be read as images: {root}/bad.png"),
        # Before: passed the check (PIL's `verify` reads no JPEG data), then `OSError: image file is truncated` at
        # the first batch that held it.
        ("truncated-jpeg", "of 21 images, 1 cannot be read as images: {root}/bad.jpg (OSError: image file is "
                           "truncated"),
        # Before: 16-bit levels clipped to 255 (read as white) without a word; float pixels "math domain error".
        ("16-bit", "of 21 images, 1 are not 8-bit images (modes 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr): "
                   "{root}/bad.png (mode 'I;16'); convert them to 8 bits"),
        ("float", "of 21 images, 1 are not 8-bit images (modes 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr): "
                  "{root}/bad.tiff (mode 'F')"),
    ],
)
def test_corrupt_or_non_8_bit_images_fail_before_training_naming_them(bad, message, tmp_path, capsys):
    root = _image_folder(tmp_path / "images", bad)
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        load_script("train_ncsn").main(["--output_dir", str(output_dir), *TINY, "--train_data_dir", str(root)])
    assert raised.value.code == 2
    assert f"error: image folder {root}: " + message.format(root=root) in capsys.readouterr().err
    assert not output_dir.exists()


def test_a_dataset_that_cannot_be_loaded_fails_before_training(tmp_path, capsys):
    """Before: `EmptyDatasetError` (an empty folder), `ConnectionError` (a repository offline) as tracebacks."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as raised:
        load_script("train_ncsn").main(
            ["--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "empty")]
        )
    assert raised.value.code == 2
    assert f"--dataset_name '{tmp_path / 'empty'}' cannot be loaded (EmptyDatasetError" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _damaged_copy(ncsn_run, tmp_path: Path, damage: str) -> Path:
    """The checkpoints of `ncsn_run` (steps 2 and 4) copied, checkpoint-4 damaged as a kill or a bad copy leaves it."""
    source, _ = ncsn_run
    output_dir = tmp_path / damage
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(source / name, output_dir / name)
    latest = output_dir / "checkpoint-4"
    weights = latest / "model.safetensors"
    if damage == "missing-weights":
        weights.unlink()
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "truncated-ema":
        ema = latest / "ema" / "diffusion_pytorch_model.safetensors"
        ema.write_bytes(ema.read_bytes()[:100])
    elif damage == "empty":
        shutil.rmtree(latest)
        latest.mkdir()
    elif damage == "overwritten-in-place":
        weights.write_bytes(bytes(weights.stat().st_size))
    return output_dir


def _resume(output_dir: Path, *extra: str):
    return load_script("train_ncsn").main(
        ["--output_dir", str(output_dir), *NCSN_RUN, "--logger", "none", "--resume_from_checkpoint", *extra]
    )


@pytest.mark.parametrize("damage", ["missing-weights", "truncated-weights", "truncated-ema", "empty"])
def test_resume_latest_passes_over_an_incomplete_checkpoint(damage, ncsn_run, tmp_path, caplog):
    """Before: `latest` took the newest folder whatever it held: FileNotFoundError (pytorch_model.bin), SafetensorError
    or a Hub lookup of the EMA folder. Now each checkpoint's manifest (file sizes) tells it is incomplete, and the run
    resumes from the last complete one, replaying the uninterrupted run."""
    output_dir = _damaged_copy(ncsn_run, tmp_path, damage)
    with caplog.at_level("WARNING"):
        result = _resume(output_dir, "latest")
    assert result.global_step == 4
    assert f"Skipping incomplete checkpoint {output_dir / 'checkpoint-4'}" in caplog.text
    expected, actual = load_file(ncsn_run[0] / UNET_WEIGHTS), load_file(output_dir / UNET_WEIGHTS)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_resume_from_a_damaged_checkpoint_or_with_other_settings_is_refused(ncsn_run, tmp_path, capsys):
    """Before: a named incomplete checkpoint crashed inside Accelerate; one damaged in place (sizes intact) raised
    `SafetensorError`; other settings (levels, batch size, seed, learning rate, EMA) resumed silently, the learning
    rate then overridden by the restored optimizer; a checkpoint past --max_train_steps was saved as the result."""
    output_dir = _damaged_copy(ncsn_run, tmp_path, "empty")
    for extra, message in (
        ([str(output_dir / "checkpoint-4")], "checkpoint-4' is incomplete or corrupt: it holds no model weights"),
        (["latest", "--num_noise_levels", "5"], "was written with other settings (--num_noise_levels 6 then, 5 now)"),
        (["latest", "--seed", "1", "--learning_rate", "0.1"],
         "(--learning_rate 0.001 then, 0.1 now; --seed 0 then, 1 now). Resume with the same settings"),
        (["latest", "--max_train_steps", "1"], "checkpoint-2 is at step 2, past --max_train_steps 1"),
    ):
        with pytest.raises(SystemExit) as raised:
            _resume(output_dir, *extra)
        assert raised.value.code == 2 and message in capsys.readouterr().err, extra
    # Before: an NCSN checkpoint resumed silently under train_score_sde's objective (the same unet).
    with pytest.raises(SystemExit) as raised:
        load_script("train_score_sde").main(
            ["--output_dir", str(output_dir), *TINY, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"]
        )
    assert raised.value.code == 2
    assert "was written by another training script (it took --num_noise_levels" in capsys.readouterr().err
    shutil.rmtree(output_dir / "checkpoint-2")
    shutil.copytree(ncsn_run[0] / "checkpoint-2", output_dir / "checkpoint-2")
    (output_dir / "checkpoint-2" / "model.safetensors").unlink()
    with pytest.raises(SystemExit) as raised:
        _resume(output_dir, "latest")
    assert raised.value.code == 2 and "no complete checkpoint in" in capsys.readouterr().err

    output_dir = _damaged_copy(ncsn_run, tmp_path, "overwritten-in-place")
    with pytest.raises(ValueError, match=r"checkpoint-4 could not be loaded \(SafetensorError: .*from an earlier"):
        _resume(output_dir, "latest", "--max_train_steps", "6")
    assert not (output_dir / "model_index.json").exists()


def test_resume_compares_local_paths_however_spelt(tmp_path, monkeypatch):
    """Before: the saved arguments were compared as strings, so `--train_data_dir data` then `./data/` (or a local
    `--dataset_name` or `--pretrained_model_name_or_path` spelt with `~`) refused a resume of the same run."""
    import argparse
    import json

    from training.arguments import check_resume_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("data", "other", "pipeline"):
        (tmp_path / name).mkdir()
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    saved = {"train_data_dir": "data", "dataset_name": "None", "pretrained_model_name_or_path": "~/pipeline", "seed": 0}
    (checkpoint / "checkpoint.json").write_text(json.dumps({"step": 2, "files": {}, "config": saved}))

    def resume(**changed) -> None:
        check_resume_config(argparse.Namespace(**{**saved, "dataset_name": None, **changed}), checkpoint)

    resume(train_data_dir="./data/", pretrained_model_name_or_path=str(tmp_path / "pipeline"))
    resume(train_data_dir=str(tmp_path / "other" / ".." / "data"), pretrained_model_name_or_path="pipeline/")
    with pytest.raises(ValueError, match="--train_data_dir data then, ./other now"):
        resume(train_data_dir="./other")
    # Hub ids, which name no local folder, are compared as they are.
    saved.update(train_data_dir="None", dataset_name="user/digits")
    (checkpoint / "checkpoint.json").write_text(json.dumps({"step": 2, "files": {}, "config": saved}))
    resume(train_data_dir=None, dataset_name="user/digits")
    with pytest.raises(ValueError, match="--dataset_name user/digits then, user/other now"):
        resume(train_data_dir=None, dataset_name="user/other")


def test_outputs_replace_the_previous_ones_only_once_complete(tmp_path):
    """Before: the final pipeline, the grid and the card were written in place, so a run killed while saving left a
    half-written unet (or PNG) over the good one of an earlier run."""
    from score_diffusers.files import written_atomically
    from training.checkpoints import save_outputs

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "weights").write_text("old")
    (tmp_path / "model_index.json").write_text("old index")

    def killed_midway(folder: Path) -> None:
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "weights").write_text("new, half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_outputs(tmp_path, killed_midway)
    assert (tmp_path / "unet" / "weights").read_text() == "old"
    assert (tmp_path / "model_index.json").read_text() == "old index"

    def complete(folder: Path) -> None:
        for name in ("unet", "scheduler"):
            (folder / name).mkdir(parents=True)
            (folder / name / "weights").write_text("new")
        (folder / "model_index.json").write_text("new index")

    save_outputs(tmp_path, complete)
    assert (tmp_path / "unet" / "weights").read_text() == (tmp_path / "scheduler" / "weights").read_text() == "new"
    assert (tmp_path / "model_index.json").read_text() == "new index"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model_index.json", "scheduler", "unet"]

    grid = tmp_path / "samples.png"
    grid.write_text("old grid")
    with pytest.raises(KeyboardInterrupt), written_atomically(grid) as partial:
        partial.write_text("half")
        raise KeyboardInterrupt
    assert grid.read_text() == "old grid" and not partial.exists()


def test_save_checkpoint_refuses_a_limit_that_would_prune_the_new_checkpoint(tmp_path):
    from training.checkpoints import save_checkpoint

    (tmp_path / "checkpoint-1").mkdir()
    for limit in (0, -1):
        with pytest.raises(ValueError, match="`checkpoints_total_limit` must be an integer >= 1"):
            save_checkpoint(None, None, tmp_path, 2, limit)
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint-1"]


class _FakeAccelerator:
    """What `save_checkpoint` asks of an `Accelerator`: one process, and a state of three small files."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        Path(folder).mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.bin", "scheduler.bin"):
            (Path(folder) / name).write_bytes(bytes(10))


def _checkpoint_steps(output_dir: Path) -> list[int]:
    from training.checkpoints import list_checkpoints

    return [step for step, _ in list_checkpoints(output_dir)]


def test_pruning_keeps_the_checkpoints_of_the_run_that_wrote_them(tmp_path, caplog):
    """Before: pruning kept the highest steps, so a run resumed from checkpoint-500 past a truncated checkpoint-1000
    deleted its own checkpoint-600 at `--checkpoints_total_limit 1` (the next resume then found nothing complete),
    and a complete checkpoint-1000 left by the run it branched from was taken by the next `latest` over its own."""
    import argparse

    from accelerate import PartialState

    from training.checkpoints import find_resume_checkpoint, save_checkpoint

    PartialState()  # for Accelerate's logger, as the scripts' `Accelerator` sets it up
    latest = argparse.Namespace(resume_from_checkpoint="latest", output_dir=str(tmp_path))

    def save(step: int, previous_step: int, limit: int | None = None) -> None:
        """A checkpoint at `step` of the run whose last one was at `previous_step`, as the training loop saves it."""
        save_checkpoint(_FakeAccelerator(), None, tmp_path, step, limit, None, previous_step)

    save(500, 0)
    save(1000, 500)
    (tmp_path / "checkpoint-1000" / "model.safetensors").write_bytes(bytes(1))
    assert find_resume_checkpoint(latest).step == 500
    with caplog.at_level("WARNING"):
        save(600, 500, limit=1)
    assert _checkpoint_steps(tmp_path) == [600] and find_resume_checkpoint(latest).step == 600
    assert f"Removed {tmp_path / 'checkpoint-1000'}: it is from a run that the one now at step 600" in caplog.text

    # Resumed from a named earlier checkpoint, the complete ones past it go too (with no limit), those between it
    # and the next save included.
    save(700, 600)
    save(800, 700)
    save(750, 600)
    assert _checkpoint_steps(tmp_path) == [600, 750] and find_resume_checkpoint(latest).step == 750

    # The limit counts complete checkpoints only, the new one first; incomplete ones are removed.
    save(800, 750)
    save(900, 800)
    (tmp_path / "checkpoint-800" / "optimizer.bin").unlink()
    save(950, 900, limit=3)
    assert _checkpoint_steps(tmp_path) == [750, 900, 950]
    save(960, 950, limit=2)
    assert _checkpoint_steps(tmp_path) == [950, 960]

    # A new run in the folder: the old run's checkpoints are not its own.
    save(100, 0)
    assert _checkpoint_steps(tmp_path) == [100]


def test_a_run_whose_loss_turns_nan_stops_naming_the_step_and_saves_nothing_from_it(tmp_path):
    """Before: a NaN loss went on into NaN checkpoints and a NaN final pipeline, saved as if good. Now the run stops
    at the first non-finite loss, before its optimizer step, and the checkpoint before it is left as it was."""
    from training.loop import TrainingDivergedError

    module = load_script("train_ncsn")
    make_loss, losses = module.make_loss, []

    def make_poisoned_loss(convention, device):
        loss_fn = make_loss(convention, device)

        def poisoned(unet, batch, generator):
            loss, extra = loss_fn(unet, batch, generator)
            losses.append(loss.item())
            # From the third step on, NaN: its gradients are NaN too.
            return (loss * math.nan if len(losses) >= 3 else loss), extra

        return poisoned

    module.make_loss = make_poisoned_loss
    output_dir = tmp_path / "out"
    argv = ["--output_dir", str(output_dir), *NCSN_RUN, "--max_train_steps", "6", "--logger", "none"]
    with pytest.raises(TrainingDivergedError, match="the loss is nan at step 3") as raised:
        module.main(argv)
    assert "the last good checkpoint is " + str(output_dir / "checkpoint-2") in str(raised.value)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    # No checkpoint after step 2, no final pipeline, and checkpoint-2 finite.
    assert sorted(path.name for path in output_dir.glob("*checkpoint-*")) == ["checkpoint-2"]
    assert not (output_dir / "model_index.json").exists() and not (output_dir / "unet").exists()
    weights = load_file(output_dir / "checkpoint-2" / "model.safetensors")
    assert weights and all(bool(torch.isfinite(tensor).all()) for tensor in weights.values())


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """A finite loss can still leave inf weights (an overflowing update): the check before every save catches it."""
    from accelerate import Accelerator
    from training.loop import TrainingDivergedError, check_weights_finite

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    check_weights_finite(accelerator, model, None, tmp_path, 5)
    with torch.no_grad():
        model.weight[0, 0] = math.inf
    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite after step 5\. .*this run had written no"):
        check_weights_finite(accelerator, model, None, tmp_path, 5)
    # Another run's newer checkpoint in the folder is not offered as this run's last good one.
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-9").mkdir()
    with pytest.raises(TrainingDivergedError) as raised:
        check_weights_finite(accelerator, model, None, tmp_path, 5, last_checkpoint_step=3)
    assert f"the last good checkpoint is {tmp_path / 'checkpoint-3'}" in str(raised.value)
    with pytest.raises(TrainingDivergedError, match="checkpoint-4, is no longer there"):
        check_weights_finite(accelerator, model, None, tmp_path, 5, last_checkpoint_step=4)


def test_bad_argument_through_accelerate_launch_is_quick_and_clear(tmp_path):
    start = time.perf_counter()
    process = launch(
        "train_ncsn.py",
        ["--output_dir", str(tmp_path / "out"), "--resolution", "10", "--block_out_channels", "16", "32", "64"],
    )
    assert process.returncode != 0
    assert "error: resolution 10 is not divisible by the U-Net's downsampling factor 4" in process.stderr
    assert "Traceback" not in process.stderr.split("error: resolution")[0]
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - start < 120


def test_image_folder_data_follow_the_images(tmp_path, capsys):
    """`--train_data_dir` reads an image folder: channels from the images, labels from sub-folders; empty fails."""
    import numpy as np
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(3):
            pixels = np.random.default_rng(index).integers(0, 256, (12, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    parser = arguments.build_parser("test")
    add_unet_arguments(parser)
    args = arguments.parse_args(
        parser,
        [
            "--output_dir",
            str(tmp_path / "out"),
            "--train_data_dir",
            str(tmp_path / "images"),
            "--resolution",
            "8",
            "--block_out_channels",
            "8",
            "16",
        ],
    )
    data = prepare_training_data(args, args.block_out_channels)
    batch = data.__getitems__([0, 5])
    assert (len(data), data.num_channels, data.resolution, data.num_classes) == (6, 3, 8, 2)
    assert (
        batch["images"].shape == (2, 3, 8, 8)
        and -1 <= float(batch["images"].min()) <= float(batch["images"].max()) <= 1
    )
    assert batch["labels"].tolist() == [0, 1]

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as raised:
        load_script("train_ncsn").main(
            ["--output_dir", str(tmp_path / "out"), "--train_data_dir", str(tmp_path / "empty")]
        )
    assert raised.value.code == 2 and "holds no readable images" in capsys.readouterr().err


def test_dataset_name_reads_a_dataset_with_its_columns(tmp_path):
    """`--dataset_name` goes through `datasets.load_dataset`, here on a local folder of Parquet files laid out as a Hub
    dataset repository is (train and test splits), with the image and label columns named by flags."""
    import datasets
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((12, 12), 40 * index, dtype=np.uint8)) for index in range(5)]
    features = datasets.Features({"picture": datasets.Image(), "digit": datasets.ClassLabel(num_classes=3)})
    repository = tmp_path / "repo" / "data"
    repository.mkdir(parents=True)
    for split, keep in (("train", slice(0, 4)), ("test", slice(4, 5))):
        rows = {"picture": images[keep], "digit": [0, 1, 2, 1, 0][keep]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(repository / f"{split}-00000-of-00001.parquet")
    parser = arguments.build_parser("test")
    add_unet_arguments(parser)
    argv = ["--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "repo"), "--resolution", "8"]
    argv += ["--block_out_channels", "8", "16", "--image_column", "picture", "--label_column", "digit"]
    argv += ["--cache_dir", str(tmp_path / "cache")]
    args = arguments.parse_args(parser, argv)

    data = prepare_training_data(args, args.block_out_channels)
    batch = data.__getitems__([0, 3])
    assert (len(data), data.num_channels, data.resolution, data.num_classes) == (4, 1, 8, 3)
    assert batch["labels"].tolist() == [0, 1]
    # Pixel value 40·i maps to 2·40i/255 − 1.
    torch.testing.assert_close(batch["images"][:, 0, 0, 0], torch.tensor([-1.0, 2 * 120 / 255 - 1]))
    assert len(load_image_data(args, split="test")) == 1

    args.image_column = "pixels"
    with pytest.raises(ValueError, match="no column 'pixels'"):
        prepare_training_data(args, args.block_out_channels)


def test_score_sde_ve_epsilon_in_bf16_mixed_precision(tmp_path):
    """ε-prediction on VE, trained under bf16 autocast (Accelerate's CPU mixed precision): the saved pipeline
    predicts ε and samples finite images."""
    output_dir = tmp_path / "ve"
    launch_args = [*TINY, "--sde", "ve", "--prediction_type", "epsilon", "--max_train_steps", "2"]
    launch_args += ["--num_inference_steps", "2", "--mixed_precision", "bf16", "--output_dir", str(output_dir)]
    log = check_ok(launch("train_score_sde.py", launch_args))
    assert "Mixed precision type: bf16" in log

    pipe = ScoreGuidedPipeline.from_pretrained(output_dir)
    assert (pipe.scheduler.config.sde_type, pipe.scheduler.config.prediction_type) == ("ve", "epsilon")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert images.images.shape == (2, 1, 8, 8) and bool(torch.isfinite(images.images).all())
