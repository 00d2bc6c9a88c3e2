"""ScoreGuidedPipeline: stock DDPM checkpoints, every score scheduler, classifier guidance, persistence, bad input."""

from __future__ import annotations

import logging
import os

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, ScoreSdeVeScheduler
from diffusers.configuration_utils import FrozenDict
from transformers import ViTConfig, ViTForImageClassification

from score_diffusers import (
    AnnealedLangevinScheduler,
    NoiseConditionalClassifier,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    SDEDPMSolverScheduler,
    ScoreGuidedPipeline,
)
from score_diffusers.testing import ExactScoreModel, GaussianMixture
from test_models import IMAGE_SIZE, tiny_unet


def tiny_classifier(num_classes: int = 3) -> NoiseConditionalClassifier:
    torch.manual_seed(1)
    return NoiseConditionalClassifier(
        sample_size=IMAGE_SIZE, in_channels=1, num_classes=num_classes, block_out_channels=(8,), norm_num_groups=4
    ).eval()


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory) -> str:
    """A tiny DDPM saved by Diffusers' own DDPMPipeline."""
    folder = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(folder)
    return str(folder)


def load(folder: str, **kwargs) -> ScoreGuidedPipeline:
    pipe = ScoreGuidedPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_calls(module: torch.nn.Module) -> list[torch.Tensor]:
    """Record the timestep argument of every call of `module`."""
    calls = []
    module.register_forward_pre_hook(lambda _, args, kwargs: calls.append(args[1].clone()), with_kwargs=True)
    return calls


def public_config(component) -> dict:
    return {key: value for key, value in component.config.items() if not key.startswith("_")}


def record_steps(scheduler) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Record (model_output, timestep, sample) of every `scheduler.step` call."""
    records, step = [], scheduler.step

    def recording_step(model_output, timestep, sample, **kwargs):
        records.append((model_output.detach().clone(), timestep, sample.detach().clone()))
        return step(model_output, timestep, sample, **kwargs)

    scheduler.step = recording_step
    return records


# ---- stock DDPM checkpoints and every scheduler --------------------------------------------------------------------


def test_ddpm_folder_loads_with_a_logged_default_score_scheduler(ddpm_folder, caplog):
    with caplog.at_level(logging.WARNING):
        pipe = load(ddpm_folder)
    assert isinstance(pipe.scheduler, ProbabilityFlowScheduler)
    assert pipe.scheduler.config.sde_type == "vp" and pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.classifier is None
    assert "swapped the checkpoint's DDPMScheduler for ProbabilityFlowScheduler" in caplog.text
    # Same ᾱ table as the checkpoint's DDPMScheduler at the grid points.
    alphas_cumprod = DDPMScheduler(num_train_timesteps=100).alphas_cumprod.double()
    grid = torch.tensor([0, 50, 99], dtype=torch.float64)
    torch.testing.assert_close(pipe.scheduler.sde.mean_coeff(grid / 99) ** 2, alphas_cumprod[[0, 50, 99]])


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda config: ProbabilityFlowScheduler.from_config(config, solver="euler"),
        lambda config: PredictorCorrectorScheduler.from_config(config, predictor="ancestral", corrector="none"),
        lambda config: PredictorCorrectorScheduler.from_config(config, predictor="reverse_diffusion"),
    ],
    ids=["probability_flow_euler", "ancestral", "pc_reverse_diffusion_langevin"],
)
def test_ddpm_checkpoint_samples_with_a_swapped_scheduler(ddpm_folder, make_scheduler):
    config = DDPMScheduler.load_config(ddpm_folder, subfolder="scheduler")
    pipe = load(ddpm_folder, scheduler=make_scheduler(config))
    calls = count_calls(pipe.unet)
    images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    # One unet evaluation per entry of `timesteps`, each fed exactly that entry.
    assert len(calls) == len(pipe.scheduler.timesteps)
    for call, timestep in zip(calls, pipe.scheduler.timesteps):
        assert torch.equal(call, timestep.expand(2))


def test_annealed_langevin_and_the_default_ve_sampler_drive_a_sigma_conditioned_score_unet():
    unet = tiny_unet(time_embedding_type="fourier", in_channels=2, out_channels=2, sample_size=(8, 8))
    annealed = AnnealedLangevinScheduler(num_train_timesteps=10, sigma_min=0.01, sigma_max=1.0, steps_per_level=2)
    for scheduler in (annealed, ScoreSdeVeScheduler(num_train_timesteps=10, sigma_max=1.0)):
        pipe = ScoreGuidedPipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=3, num_inference_steps=3, output_type="pt").images
        assert images.shape == (3, 2, 8, 8)
        assert torch.isfinite(images).all()
    # A ScoreSdeVeScheduler is swapped for the registry's VE default, on its σ range and σ timesteps.
    assert isinstance(pipe.scheduler, SDEDPMSolverScheduler) and pipe.scheduler.config.sde_type == "ve"
    assert (pipe.scheduler.config.sigma_max, pipe.scheduler.config.timestep_type) == (1.0, "sigma")


def test_output_types(ddpm_folder):
    pipe = load(ddpm_folder)
    kwargs = dict(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    pil = pipe(**kwargs).images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].mode == "L"
    kwargs["generator"] = torch.Generator().manual_seed(0)
    (tensor,) = pipe(**kwargs, output_type="pt", return_dict=False)
    assert tensor.shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(np.asarray(pil[0]), np.round(tensor[0, 0].numpy() * 255), atol=1)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    latent = pipe(**kwargs, output_type="latent").images
    torch.testing.assert_close(tensor, (latent / 2 + 0.5).clamp(0, 1))


def test_callback_sees_every_step_and_can_replace_the_sample(ddpm_folder):
    pipe = load(ddpm_folder, scheduler=PredictorCorrectorScheduler.from_config(
        DDPMScheduler.load_config(ddpm_folder, subfolder="scheduler"), predictor="ancestral", corrector="none"))
    seen = []

    def callback(pipeline, step_index, timestep, callback_kwargs):
        seen.append((step_index, sorted(callback_kwargs)))
        return {"sample": torch.zeros_like(callback_kwargs["sample"])}

    images = pipe(num_inference_steps=3, output_type="pt", callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=["sample", "pred_original_sample"]).images
    assert seen == [(i, ["pred_original_sample", "sample"]) for i in range(3)]
    # The last step's replacement is what comes out: zeros map to mid-grey.
    torch.testing.assert_close(images, torch.full_like(images, 0.5))


def test_a_callback_that_replaces_latents_and_sample_with_different_tensors_is_refused(ddpm_folder):
    pipe = load(ddpm_folder)

    def callback(pipeline, step_index, timestep, callback_kwargs):
        return {"latents": torch.zeros_like(callback_kwargs["latents"]),
                "sample": torch.ones_like(callback_kwargs["sample"])}

    with pytest.raises(ValueError, match="different tensors as `latents` and `sample`"):
        pipe(num_inference_steps=2, output_type="pt", callback_on_step_end=callback,
             callback_on_step_end_tensor_inputs=["latents", "sample"])


# ---- reproducibility and persistence ------------------------------------------------------------------------------


def test_same_seed_same_images_and_per_sample_generators(ddpm_folder):
    # Per-sample corrector norms, so that a sample's Langevin step size does not depend on its batch.
    pipe = load(ddpm_folder, scheduler=PredictorCorrectorScheduler.from_config(
        DDPMScheduler.load_config(ddpm_folder, subfolder="scheduler"), predictor="ancestral", corrector_norm="sample"))

    def run(batch_size, generator):
        return pipe(batch_size=batch_size, num_inference_steps=4, generator=generator, output_type="pt").images

    first = run(2, torch.Generator().manual_seed(7))
    torch.testing.assert_close(run(2, torch.Generator().manual_seed(7)), first, rtol=0, atol=0)
    assert not torch.equal(run(2, torch.Generator().manual_seed(8)), first)
    # With one generator per sample, a sample does not depend on the rest of the batch.
    batch = run(2, [torch.Generator().manual_seed(s) for s in (3, 4)])
    alone = run(1, [torch.Generator().manual_seed(4)])
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-5)


def test_save_pretrained_round_trips_every_component(ddpm_folder, tmp_path):
    scheduler = PredictorCorrectorScheduler.from_config(
        DDPMScheduler.load_config(ddpm_folder, subfolder="scheduler"), predictor="ancestral", snr=0.1
    )
    pipe = load(ddpm_folder, scheduler=scheduler, classifier=tiny_classifier())
    pipe.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "classifier" / "diffusion_pytorch_model.safetensors")
    assert not list(tmp_path.rglob("*.bin"))
    loaded = load(str(tmp_path))
    assert isinstance(loaded.classifier, NoiseConditionalClassifier)
    assert isinstance(loaded.scheduler, PredictorCorrectorScheduler)
    assert public_config(loaded.scheduler) == public_config(pipe.scheduler)

    kwargs = dict(batch_size=2, num_inference_steps=3, class_labels=[0, 2], guidance_scale=1.5, output_type="pt")
    before = pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images
    after = loaded(**kwargs, generator=torch.Generator().manual_seed(5)).images
    torch.testing.assert_close(after, before, rtol=0, atol=0)

    # A scheduler override also applies to the package's own saves.
    swapped = load(str(tmp_path), scheduler=ProbabilityFlowScheduler.from_config(loaded.scheduler.config))
    assert isinstance(swapped.scheduler, ProbabilityFlowScheduler)


def test_push_to_hub_uploads_the_saved_pipeline(ddpm_folder, monkeypatch):
    import diffusers.utils.hub_utils as hub_utils
    from huggingface_hub.errors import EntryNotFoundError

    uploads = []

    class RepoUrl:
        repo_id = "user/tiny-score"

    def fake_upload_folder(repo_id, folder_path, **kwargs):
        files = sorted(os.path.relpath(os.path.join(root, f), folder_path) for root, _, fs in os.walk(folder_path)
                       for f in fs)
        uploads.append({"repo_id": repo_id, "files": files, **kwargs})
        return "https://huggingface.co/user/tiny-score/commit/0"

    def no_remote_card(*args, **kwargs):
        raise EntryNotFoundError("no card on the Hub yet")

    monkeypatch.setattr(hub_utils, "create_repo", lambda repo_id, **kwargs: RepoUrl())
    monkeypatch.setattr(hub_utils, "upload_folder", fake_upload_folder)
    monkeypatch.setattr(hub_utils.ModelCard, "load", no_remote_card)

    pipe = load(ddpm_folder, classifier=tiny_classifier())
    pipe.push_to_hub("user/tiny-score")
    (upload,) = uploads
    assert upload["repo_id"] == "user/tiny-score"
    for expected in (
        "model_index.json",
        "README.md",
        "scheduler/scheduler_config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "classifier/diffusion_pytorch_model.safetensors",
    ):
        assert expected in upload["files"]


# ---- classifier guidance ------------------------------------------------------------------------------------------

MIXTURE = GaussianMixture(means=torch.tensor([[-0.5, -0.5], [0.5, 0.5]]), stds=0.2)


class OnCPU(torch.nn.Module):
    """A plain module with the `device` property that Diffusers' pipeline machinery reads from components."""

    device = torch.device("cpu")


class ExactScoreUNet(OnCPU):
    """The exact score (or ε) of `MIXTURE` as a 'unet' over 1×1×2 'images', in `scheduler`'s conventions."""

    def __init__(self, scheduler):
        super().__init__()
        self.config = FrozenDict(sample_size=(1, 2), in_channels=1)
        self.exact = ExactScoreModel(MIXTURE, scheduler)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.exact(sample.reshape(sample.shape[0], -1), timestep).reshape(sample.shape)


class NoisyMixtureClassifier(OnCPU):
    """q(y | x_t, t) from an MLP on (c_in·x̄, log σ̄), x̄ = x_t/α_t, σ̄ = σ_t/α_t, c_in = 1/√(1 + σ̄²).

    x̄ = x₀ + σ̄·z under both VE and VP noise, so one network serves every scheduler; c_in keeps its input O(1).
    """

    def __init__(self, scheduler=None):
        super().__init__()
        self.scheduler = scheduler
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2)
        )

    def logits(self, scaled_sample: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
        c_in = torch.rsqrt(1 + (2 * log_ratio).exp())
        return self.net(torch.cat([scaled_sample * c_in, log_ratio], dim=1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = self.scheduler.time_for_timestep(timestep.detach().cpu())
        alpha = self.scheduler.sde.mean_coeff(t).float()[:, None]
        log_ratio = self.scheduler.sde.noise_to_signal(t).log().float()[:, None]
        return self.logits(sample.reshape(sample.shape[0], -1) / alpha, log_ratio)


@pytest.fixture(scope="module")
def mixture_classifier_state() -> dict[str, torch.Tensor]:
    """Weights of a `NoisyMixtureClassifier` trained on x̄ = x₀ + σ̄·z, log σ̄ ~ U[log 1e-3, log 300]."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    classifier = NoisyMixtureClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=3e-3)
    for _ in range(400):
        x0, labels = MIXTURE.sample(512, generator=generator)
        log_ratio = torch.empty(512, 1, dtype=torch.float64).uniform_(np.log(1e-3), np.log(300), generator=generator)
        noisy = x0 + log_ratio.exp() * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        loss = torch.nn.functional.cross_entropy(classifier.logits(noisy.float(), log_ratio.float()), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier.state_dict()


MIXTURE_SCHEDULERS = {
    "sde_dpm_solver": (lambda: SDEDPMSolverScheduler(sde_type="vp"), 20),
    "probability_flow_dpmpp_3m": (lambda: ProbabilityFlowScheduler(sde_type="vp", solver="dpmpp_3m"), 15),
    "probability_flow_unipc": (lambda: ProbabilityFlowScheduler(sde_type="vp", solver="unipc"), 15),
    "probability_flow_heun": (lambda: ProbabilityFlowScheduler(sde_type="vp", timestep_type="continuous"), 15),
    "probability_flow_churn": (
        lambda: ProbabilityFlowScheduler(sde_type="vp", solver="dpmpp_2m", timestep_type="continuous", s_churn=10.0),
        20,
    ),
    "pc_ancestral_epsilon": (
        lambda: PredictorCorrectorScheduler(
            sde_type="vp", predictor="ancestral", prediction_type="epsilon", timestep_type="discrete"
        ),
        30,
    ),
    "annealed_langevin": (
        lambda: AnnealedLangevinScheduler(
            num_train_timesteps=30, sigma_min=0.01, sigma_max=2.0, steps_per_level=4, step_size=2e-5, consistent=False
        ),
        30,
    ),
    # η = step_size/(2σ_min²) = 1 is consistent at any number of levels, the 3 of the guided-score test included.
    "annealed_langevin_consistent": (
        lambda: AnnealedLangevinScheduler(
            num_train_timesteps=30, sigma_min=0.01, sigma_max=2.0, steps_per_level=1, step_size=2e-4, consistent=True
        ),
        30,
    ),
}


def mixture_pipeline(scheduler, classifier_state: dict[str, torch.Tensor] | None = None) -> ScoreGuidedPipeline:
    classifier = None
    if classifier_state is not None:
        classifier = NoisyMixtureClassifier(scheduler)
        classifier.load_state_dict(classifier_state)
        classifier.eval().requires_grad_(False)
    pipe = ScoreGuidedPipeline(unet=ExactScoreUNet(scheduler), scheduler=scheduler, classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", sorted(MIXTURE_SCHEDULERS))
def test_guidance_raises_accuracy_with_every_scheduler(name, mixture_classifier_state):
    make_scheduler, num_inference_steps = MIXTURE_SCHEDULERS[name]
    pipe = mixture_pipeline(make_scheduler(), mixture_classifier_state)
    labels = torch.arange(200) % 2

    def accuracy(guidance_scale: float) -> float:
        images = pipe(batch_size=200, num_inference_steps=num_inference_steps, class_labels=labels,
                      guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), output_type="pt").images
        samples = (images * 2 - 1).reshape(200, 2)
        return float((MIXTURE.classify(samples) == labels).float().mean())

    unguided, guided = accuracy(0.0), accuracy(2.0)
    assert 0.3 < unguided < 0.7, unguided
    assert guided > 0.95, (unguided, guided)


class LinearClassifier(OnCPU):
    """logits = W·x + b, ignoring the noise level: ∇ₓ log softmax(Wx + b)_y = W_y − Σ_k p_k W_k."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(9)
        self.weight = torch.nn.Parameter(torch.randn(3, 2, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(3, generator=generator))
        self.timesteps = []

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor):
        self.timesteps.append(timestep.clone())
        return sample.reshape(sample.shape[0], -1) @ self.weight.T + self.bias

    def log_prob_gradient(self, sample: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            probs = torch.softmax(sample.reshape(sample.shape[0], -1) @ self.weight.T + self.bias, dim=1)
            return (self.weight[labels] - probs @ self.weight).reshape(sample.shape)


@pytest.mark.parametrize("name", sorted(MIXTURE_SCHEDULERS))
def test_guided_score_is_score_plus_scale_times_linear_classifier_gradient(name):
    make_scheduler, _ = MIXTURE_SCHEDULERS[name]
    scheduler = make_scheduler()
    pipe = mixture_pipeline(scheduler)
    pipe.register_modules(classifier=LinearClassifier())
    unet_timesteps = count_calls(pipe.unet)
    records = record_steps(scheduler)
    labels, scale = torch.tensor([0, 1, 2, 1]), 2.5
    pipe(batch_size=4, num_inference_steps=3, class_labels=labels, guidance_scale=scale, output_type="pt")

    assert len(records) == len(scheduler.timesteps) == len(pipe.classifier.timesteps)
    for (model_output, timestep, sample), unet_timestep, classifier_timestep in zip(
        records, unet_timesteps, pipe.classifier.timesteps
    ):
        assert torch.equal(classifier_timestep, unet_timestep)
        score = scheduler.score_from_model_output(pipe.unet(sample, unet_timestep), timestep)
        expected = score + scale * pipe.classifier.log_prob_gradient(sample, labels)
        torch.testing.assert_close(scheduler.score_from_model_output(model_output, timestep), expected,
                                   rtol=1e-4, atol=1e-4)


def tiny_vit(num_labels: int = 3) -> ViTForImageClassification:
    torch.manual_seed(2)
    config = ViTConfig(image_size=IMAGE_SIZE, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=16, num_labels=num_labels)
    return ViTForImageClassification(config).eval()


def test_transformers_classifier_guides_through_the_denoised_estimate(ddpm_folder, tmp_path):
    pipe = load(ddpm_folder, classifier=tiny_vit())
    scheduler = pipe.scheduler
    records = record_steps(scheduler)
    labels, scale = torch.tensor([2, 0]), 3.0
    kwargs = dict(batch_size=2, num_inference_steps=3, class_labels=labels, guidance_scale=scale, output_type="pt")
    images = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images

    for model_output, timestep, sample in records:
        with torch.no_grad():
            score = scheduler.score_from_model_output(pipe.unet(sample, timestep.expand(2)).sample, timestep)
        t = scheduler.time_for_timestep(timestep)
        alpha, sigma = float(scheduler.sde.mean_coeff(t)), float(scheduler.sde.marginal_std(t))
        # ∇ₓ log q(y | x̂₀(x)) with x̂₀ = (x + σ²s)/α and s held fixed is (1/α)·∇_x̂₀ log q(y | x̂₀).
        denoised = ((sample + sigma**2 * score) / alpha).requires_grad_(True)
        log_probs = torch.log_softmax(pipe.classifier(pixel_values=denoised).logits, dim=1)
        (gradient,) = torch.autograd.grad(log_probs.gather(1, labels[:, None]).sum(), denoised)
        torch.testing.assert_close(scheduler.score_from_model_output(model_output, timestep),
                                   score + scale * gradient / alpha, rtol=1e-4, atol=1e-4)

    pipe.save_pretrained(tmp_path)
    loaded = load(str(tmp_path))
    assert isinstance(loaded.classifier, ViTForImageClassification)
    torch.testing.assert_close(loaded(**kwargs, generator=torch.Generator().manual_seed(0)).images, images,
                               rtol=0, atol=0)


def test_class_conditional_unet_takes_labels_directly():
    pipe = ScoreGuidedPipeline(unet=tiny_unet(num_class_embeds=3), scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)

    def run(labels):
        return pipe(batch_size=2, num_inference_steps=2, class_labels=labels,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    assert not torch.equal(run([0, 0]), run([2, 2]))
    torch.testing.assert_close(run(1), run(torch.tensor([1, 1])), rtol=0, atol=0)
    with pytest.raises(ValueError, match="class-conditional"):
        pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        run([0, 3])


# ---- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("with_classifier", "kwargs", "message"),
    [
        (False, {"class_labels": 1}, "neither"),
        (False, {"class_labels": 1, "guidance_scale": 1.0}, "needs a classifier"),
        (True, {"class_labels": 3, "guidance_scale": 1.0}, r"class_labels.*\[0, 2\]"),
        (True, {"class_labels": -1, "guidance_scale": 1.0}, r"class_labels.*\[0, 2\]"),
        (True, {"class_labels": 1.5, "guidance_scale": 1.0}, "integers"),
        (True, {"class_labels": [0, 1, 2], "guidance_scale": 1.0}, "batch_size"),
        (True, {"class_labels": 1, "guidance_scale": -1.0}, "guidance_scale"),
        (True, {"guidance_scale": 1.0}, "needs `class_labels`"),
        (True, {"generator": [torch.Generator()]}, "generator"),
        (True, {"batch_size": 0}, "batch_size"),
        (True, {"output_type": "pixels"}, "output_type.*'pil', 'np', 'pt', 'latent'"),
        (True, {"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_input_raises_a_clear_value_error(ddpm_folder, with_classifier, kwargs, message):
    pipe = load(ddpm_folder, classifier=tiny_classifier() if with_classifier else None)
    with pytest.raises(ValueError, match=message):
        pipe(**{"batch_size": 2, "num_inference_steps": 2, **kwargs})


def test_label_out_of_range_of_a_classifier_without_config_raises(ddpm_folder):
    class TwoClasses(OnCPU):
        def forward(self, sample, timestep):
            return sample.flatten(1)[:, :2]

    pipe = load(ddpm_folder, classifier=TwoClasses())
    with pytest.raises(ValueError, match=r"class_labels.*\[0, 1\]"):
        pipe(num_inference_steps=2, class_labels=2, guidance_scale=1.0)


def test_unknown_scheduler_and_deviceless_component_are_rejected():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="scheduler"):
        ScoreGuidedPipeline(unet=tiny_unet(), scheduler=FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="classifier.*device"):
        ScoreGuidedPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(), classifier=torch.nn.Linear(2, 2))


def test_any_alpha_bar_scheduler_is_swapped_for_the_default_vp_sampler():
    from diffusers import EulerDiscreteScheduler

    pipe = ScoreGuidedPipeline(unet=tiny_unet(), scheduler=EulerDiscreteScheduler(num_train_timesteps=100))
    assert isinstance(pipe.scheduler, ProbabilityFlowScheduler)
    assert (pipe.scheduler.config.sde_type, pipe.scheduler.config.num_train_timesteps) == ("vp", 100)


# ---- likelihood ---------------------------------------------------------------------------------------------------


def test_log_likelihood_takes_pipeline_images(ddpm_folder):
    pipe = load(ddpm_folder)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    kwargs = dict(method="euler", num_steps=3, generator=torch.Generator().manual_seed(0), show_progress=False)
    result = pipe.log_likelihood(images, **kwargs)
    assert result.bits_per_dim.shape == (2,) and torch.isfinite(result.bits_per_dim).all()
    from_pil = pipe.log_likelihood(pipe.numpy_to_pil(images), **{**kwargs, "generator": torch.Generator().manual_seed(0)})
    torch.testing.assert_close(from_pil.bits_per_dim, result.bits_per_dim, rtol=1e-2, atol=1e-2)

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe.log_likelihood(images * 2 - 1)
    with pytest.raises(ValueError, match="channels"):
        pipe.log_likelihood(np.repeat(images, 3, axis=-1))


@pytest.mark.parametrize("timestep_type", ["sigma", "discrete"])
def test_guidance_converts_once_per_evaluation_and_never_inverts_time(ddpm_folder, monkeypatch, timestep_type):
    """The guided loop adds the classifier term at the grid's σ: no timestep → t inversion per evaluation (VP with σ
    timesteps used to bisect twice), and one output ↔ score conversion besides the step's own."""
    from score_diffusers.conventions import ModelConvention
    from score_diffusers.sde import VPSDE

    calls = {"inverse": 0, "conversion": 0}
    for owner, name, kind in (
        (VPSDE, "time_from_noise_to_signal", "inverse"),
        (ModelConvention, "time", "inverse"),
        (ModelConvention, "score_from_output", "conversion"),
        (ModelConvention, "output_from_score", "conversion"),
    ):
        original = getattr(owner, name)

        def counted(*args, _original=original, _kind=kind, **kwargs):
            calls[_kind] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    scheduler = PredictorCorrectorScheduler(
        sde_type="vp", prediction_type="epsilon", timestep_type=timestep_type, corrector="none"
    )
    pipe = ScoreGuidedPipeline(unet=tiny_unet(), scheduler=scheduler, classifier=tiny_classifier())
    pipe.set_progress_bar_config(disable=True)
    for steps in (3, 6):
        calls.update(inverse=0, conversion=0)
        pipe(batch_size=2, num_inference_steps=steps, class_labels=[0, 1], guidance_scale=2.0, output_type="pt")
        assert calls == {"inverse": 0, "conversion": 2 * steps}, (steps, calls)


def test_a_denoised_input_classifier_can_be_passed_wrapped(ddpm_folder):
    from score_diffusers import DenoisedInputClassifier

    kwargs = dict(batch_size=2, num_inference_steps=3, class_labels=[2, 0], guidance_scale=3.0, output_type="pt")
    wrapped = load(ddpm_folder, classifier=DenoisedInputClassifier(tiny_vit()))
    raw = load(ddpm_folder, classifier=tiny_vit())
    torch.testing.assert_close(wrapped(**kwargs, generator=torch.Generator().manual_seed(0)).images,
                               raw(**kwargs, generator=torch.Generator().manual_seed(0)).images, rtol=0, atol=0)


def test_sample_adaptive_runs_guided_and_reports_evaluations_per_image(ddpm_folder):
    pipe = load(ddpm_folder, classifier=tiny_classifier())
    kwargs = dict(batch_size=3, rtol=0.5, output_type="pt")
    plain = pipe.sample_adaptive(**kwargs, generator=[torch.Generator().manual_seed(seed) for seed in (0, 1, 2)])
    assert plain.images.shape == (3, 1, IMAGE_SIZE, IMAGE_SIZE) and bool(torch.isfinite(plain.images).all())
    assert plain.nfe.shape == (3,) and int(plain.nfe.min()) >= 4
    again = pipe.sample_adaptive(**kwargs, generator=[torch.Generator().manual_seed(seed) for seed in (0, 1, 2)])
    torch.testing.assert_close(again.images, plain.images, rtol=0, atol=0)
    guided = pipe.sample_adaptive(**kwargs, generator=[torch.Generator().manual_seed(seed) for seed in (0, 1, 2)], class_labels=[0, 1, 2],
                                  guidance_scale=5.0)
    assert not torch.equal(guided.images, plain.images)


def test_missing_folder_given_as_a_path_is_a_clear_error(tmp_path):
    """A `pathlib.Path` names a folder; a missing one raises `FileNotFoundError` (an `OSError`, as Diffusers' own
    loaders raise for a folder without a config) naming the argument."""
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        ScoreGuidedPipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(OSError, match="scheduler_config.json"):
        PredictorCorrectorScheduler.from_pretrained(tmp_path / "missing")


def test_latents_are_the_initial_noise_before_init_noise_sigma(ddpm_folder):
    """`latents` replace the draw of x_T's standard normal noise; the scheduler's `init_noise_sigma` scales them, as
    Diffusers' `prepare_latents` does. A wrong shape or non-finite values are refused."""
    pipe = load(ddpm_folder, scheduler=PredictorCorrectorScheduler(sigma_max=5.0, timestep_type="sigma"))
    seen = record_steps(pipe.scheduler)
    latents = torch.randn((2, 1, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(0))
    pipe(batch_size=2, num_inference_steps=2, latents=latents, output_type="latent")
    torch.testing.assert_close(seen[0][2], latents * 5.0)
    for bad, message in ((latents[:1], r"shape \(2, 1, 8, 8\)"), (latents.fill_(float("nan")), "finite")):
        with pytest.raises(ValueError, match=message):
            pipe(batch_size=2, num_inference_steps=2, latents=bad)


def test_custom_timesteps_and_sigmas_take_the_place_of_num_inference_steps(ddpm_folder):
    """`timesteps` or `sigmas` set the grid as Diffusers' `retrieve_timesteps` does: the default grid's own points give
    the default run's images; a scheduler that takes no custom grid refuses them naming the argument."""
    pipe = load(ddpm_folder, scheduler=ProbabilityFlowScheduler(sde_type="vp", timestep_type="discrete",
                                                                 prediction_type="epsilon", solver="euler"))
    def seeded() -> dict:
        return {"generator": torch.Generator().manual_seed(0), "output_type": "latent"}

    expected = pipe(num_inference_steps=3, **seeded()).images
    times = pipe.scheduler.grid.times
    for kwargs in ({"timesteps": pipe.scheduler.timesteps.tolist()},
                   {"sigmas": pipe.scheduler.sde.noise_to_signal(times).tolist()}):
        torch.testing.assert_close(pipe(**seeded(), **kwargs).images, expected, rtol=1e-5, atol=1e-5)
        assert len(pipe.scheduler.timesteps) == 3
    with pytest.raises(ValueError, match="sigmas"):
        pipe(timesteps=[500.0, 100.0], sigmas=[1.0, 0.5])
    pipe.scheduler = AnnealedLangevinScheduler()
    with pytest.raises(ValueError, match="`timesteps` needs a scheduler"):
        pipe(timesteps=[10.0, 1.0])
