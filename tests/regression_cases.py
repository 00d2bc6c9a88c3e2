"""The behaviour a refactor must keep: each scheduler's samples for fixed seeds on the exact-score mixture (every
configuration of the common scheduler tests), pipeline runs with and without guidance, a likelihood and one loss of
each training script, as named tensors.

`python tests/regression_cases.py` records them into `tests/data/regression.safetensors`; `test_regression.py`
recomputes them and compares. Record again only when a change of behaviour is intended, and say so in the commit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FIXTURE_PATH = HERE / "data" / "regression.safetensors"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from helpers import (  # noqa: E402
    DATA_DIM,
    MIXTURE_SEED,
    NUM_COMPONENTS,
    make_generator,
    per_sample_generators,
    sample_with_seed,
    tiny_unet,
)
from test_schedulers import (  # noqa: E402
    TestAnnealedLangevinScheduler,
    TestPredictorCorrectorScheduler,
    TestProbabilityFlowScheduler,
)

from score_diffusers import (  # noqa: E402
    AnnealedLangevinScheduler,
    NoiseConditionalClassifier,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    ScoreGuidedPipeline,
    log_likelihood,
)

from score_diffusers.testing import ExactScoreModel, GaussianMixture  # noqa: E402

SCHEDULER_TESTS = (TestAnnealedLangevinScheduler, TestPredictorCorrectorScheduler, TestProbabilityFlowScheduler)
BATCH = 4
STEPS = 4


def _scheduler_cases(mixture: GaussianMixture) -> dict[str, torch.Tensor]:
    cases = {}
    for test_class in SCHEDULER_TESTS:
        for number, config in enumerate(test_class.configs):
            scheduler = test_class.scheduler_class(**config)
            name = f"{test_class.scheduler_class.__name__}/{number}"
            cases[f"{name}/seed"] = sample_with_seed(scheduler, mixture, (BATCH, DATA_DIM), STEPS, seed=7)
            scheduler.set_timesteps(STEPS)
            cases[f"{name}/timesteps"] = scheduler.timesteps.clone()
            # Per-sample generators, the initial sample drawn from them as the pipeline draws it.
            generators = per_sample_generators(range(BATCH))
            sample = torch.cat([torch.randn(1, DATA_DIM, generator=g) for g in generators]) * scheduler.init_noise_sigma
            model = ExactScoreModel(mixture, scheduler)
            for timestep in scheduler.timesteps:
                sample = scheduler.step(model(sample, timestep), timestep, sample, generator=generators).prev_sample
            cases[f"{name}/generators"] = sample
    return cases


def _pipeline_cases() -> dict[str, torch.Tensor]:
    cases = {}
    unet = tiny_unet()
    torch.manual_seed(1)
    classifier = NoiseConditionalClassifier(
        sample_size=8, in_channels=1, num_classes=3, block_out_channels=(8,), norm_num_groups=4
    ).eval()
    schedulers = {
        "pf_vp": ProbabilityFlowScheduler(sde_type="vp", prediction_type="epsilon", timestep_type="discrete"),
        "pc_vp": PredictorCorrectorScheduler(sde_type="vp", prediction_type="epsilon", timestep_type="discrete"),
        # The defaults these cases were recorded with, named (the defaults changed since).
        "pc_ve_sigma": PredictorCorrectorScheduler(timestep_type="sigma", sigma_max=5.0, corrector_norm="batch"),
        "pf_vp_sigma": ProbabilityFlowScheduler(sde_type="vp", timestep_type="sigma", prediction_type="epsilon"),
        "als": AnnealedLangevinScheduler(
            sigma_max=5.0, num_train_timesteps=10, steps_per_level=2, step_size=1.24e-5, consistent=False,
            forget_prior=False,
        ),
    }
    for name, scheduler in schedulers.items():
        pipe = ScoreGuidedPipeline(unet=unet, scheduler=scheduler, classifier=classifier)
        pipe.set_progress_bar_config(disable=True)
        for scale in (0.0, 2.0):
            images = pipe(
                batch_size=2,
                num_inference_steps=3,
                generator=per_sample_generators([3, 4]),
                class_labels=[0, 2] if scale else None,
                guidance_scale=scale,
                output_type="pt",
            ).images
            cases[f"pipeline/{name}/guidance_{scale:g}"] = images
    return cases


def _likelihood_cases(mixture: GaussianMixture) -> dict[str, torch.Tensor]:
    cases = {}
    samples = mixture.sample(3, generator=make_generator(5))[0].float()
    for name, scheduler in {
        "ve": ProbabilityFlowScheduler(),
        "vp_discrete_eps": ProbabilityFlowScheduler(sde_type="vp", prediction_type="epsilon", timestep_type="discrete"),
        "subvp_sigma": ProbabilityFlowScheduler(sde_type="subvp", timestep_type="sigma"),
    }.items():
        result = log_likelihood(
            ExactScoreModel(mixture, scheduler), scheduler, samples, divergence="exact", show_progress=False,
            method="rk4", num_steps=20,
        )
        cases[f"likelihood/{name}"] = result.log_likelihood
    return cases


def _training_cases() -> dict[str, torch.Tensor]:
    from training import train_ncsn, train_score_sde

    cases = {}
    x0 = torch.randn(4, 1, 8, 8, generator=make_generator(11)).clamp(-1, 1)
    batch = {"images": x0}
    score_unet = tiny_unet(time_embedding_type="fourier")
    eps_unet = tiny_unet()
    for sde in ("ve", "vp", "subvp"):
        for prediction_type, weighting, importance in (
            ("score", "score", False),
            ("epsilon", "likelihood", False),
            ("score", "likelihood", True),
        ):
            args = argparse.Namespace(
                num_train_timesteps=1000, sde=sde, sigma_min=0.01, sigma_max=5.0, beta_min=0.1, beta_max=20.0,
                prediction_type=prediction_type, sampler="pc", training_eps=1e-5 if sde == "ve" else 1e-3,
                importance_sampling=importance, weighting=weighting,
            )
            scheduler = train_score_sde.build_scheduler(args, None)
            loss_fn = train_score_sde.make_loss(args, scheduler.convention, torch.device("cpu"))
            unet = score_unet if prediction_type == "score" else eps_unet
            with torch.no_grad():
                loss, _ = loss_fn(unet, batch, make_generator(12))
            cases[f"training/score_sde/{sde}/{prediction_type}/{weighting}/{int(importance)}"] = loss.reshape(1)
    scheduler = AnnealedLangevinScheduler(num_train_timesteps=20, sigma_max=5.0)
    with torch.no_grad():
        loss, _ = train_ncsn.make_loss(scheduler.convention, torch.device("cpu"))(score_unet, batch, make_generator(12))
    cases["training/ncsn"] = loss.reshape(1)
    return cases


def record() -> dict[str, torch.Tensor]:
    """Every case, named; float tensors on the CPU."""
    torch.set_num_threads(1)
    mixture = GaussianMixture.random(NUM_COMPONENTS, DATA_DIM, generator=make_generator(MIXTURE_SEED))
    cases = {}
    cases.update(_scheduler_cases(mixture))
    cases.update(_pipeline_cases())
    cases.update(_likelihood_cases(mixture))
    cases.update(_training_cases())
    return {name: value.detach().cpu().contiguous() for name, value in cases.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    FIXTURE_PATH.parent.mkdir(exist_ok=True)
    save_file(record(), str(FIXTURE_PATH))
    print(f"wrote {FIXTURE_PATH}")
