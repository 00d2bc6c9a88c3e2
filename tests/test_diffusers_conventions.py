"""Diffusers' own expectations of a scheduler and a pipeline, checked on this package's.

Diffusers holds every scheduler to `SchedulerCommonTest` (tests/schedulers/test_schedulers.py) and every pipeline to
`PipelineTesterMixin` (tests/pipelines/test_pipelines_common.py). This module checks the same expectations, in its own
code, on every scheduler of the registry (VE, and VP on a DDPM table as a DDPM checkpoint gives it) and on
`ScoreGuidedPipeline` with each of them. Each check names the Diffusers test it stands for. Where a Diffusers test
drives a scheduler in a way that ours refuse by design, the check keeps its purpose and adapts the call; the adaptation
is said in the check.

Diffusers checks that cannot apply, and why:

Scheduler (`SchedulerCommonTest`, `SchedulerBaseTests`):
- `step` at arbitrary timesteps 0 and 1 without `set_timesteps` (`test_step_shape`, `check_over_*`): our schedulers
  refuse a step before `set_timesteps` or out of order (misuse raises, STYLE.md); the checks step the first entries.
- `test_trained_betas` for `AnnealedLangevinScheduler`: VE only, it has no β table. For the others Diffusers passes two
  betas with the default N = 1000; ours refuse a table whose length is not N, so the check uses N = 2.
- `test_compatibles` in the Diffusers → ours direction for configs `compatibles` leaves Diffusers out of: a VE or
  continuous-time score model has no Diffusers ᾱ-table equivalent. `_compatibles` still names every Diffusers
  scheduler whose config ours convert from, and `test_diffusers_configs_convert` holds that direction.
- `SchedulerBaseTests` (configs of mock classes registered into `diffusers`): they test `ConfigMixin` itself.
- `test_default_arguments_not_in_config`, `test_default_solver_type_after_switch`, push-to-Hub tests: they download
  from or upload to the Hub (none in the default suite); `test_overridden_keys_stick_through_swaps` keeps the first
  two's purpose offline.

Pipeline (`PipelineTesterMixin`, `PipelineLatentTesterMixin`, `PipelineKarrasSchedulerTesterMixin`):
- `num_images_per_prompt` (signature and `test_num_images_per_prompt`), `test_encode_prompt_works_in_isolation`,
  `test_StableDiffusionMixin_component`, `test_pt_np_pil_inputs_equivalent`, `test_latents_input`: text prompts, a VAE
  or image inputs; an unconditional pipeline has none (`batch_size` plays `num_images_per_prompt`'s part, as in
  Diffusers' `DDPMPipeline` tests). The deprecated `callback` / `callback_steps` are not offered.
- `test_attention_slicing_forward_pass`, `test_xformers_attention_forwardGenerator_pass`: attention-processor options
  of cross-attention UNets; `UNet2DModel` checkpoints of score models need none.
- `test_float16_inference`, `test_save_load_float16`, `test_to_device`, CPU-offload tests: need CUDA, as in Diffusers;
  they run here when a GPU is present (`requires_cuda`).
- `test_cfg`, `test_callback_cfg`: named for classifier-free guidance; their checks (output shape as the scale changes;
  `pipe.guidance_scale` changed by a step-end callback) apply to classifier guidance and run with a tiny classifier.
- `test_karras_schedulers_shape` assigns each Karras scheduler to `pipe.scheduler`; this pipeline steps through its
  scheduler's public grid, so a Diffusers scheduler is converted when the pipeline is built: the check builds the
  pipeline with each one instead.
- `test_save_load_dduf`: Diffusers 0.42 no longer loads DDUF files (`from_pretrained(..., dduf_file=)` raises).
- Layerwise casting and group offloading: memory features of `ModelMixin` (the unet's), not of this pipeline.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, HeunDiscreteScheduler, ScoreSdeVeScheduler
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import DummyObject
from helpers import make_generator, per_sample_generators, tiny_unet

from score_diffusers import NoiseConditionalClassifier, ProbabilityFlowScheduler, ScoreGuidedPipeline
from score_diffusers.schedulers import SCHEDULERS, ScoreSchedulerMixin, build_scheduler

# The two model conventions every registry scheduler is checked under: a VE score model fed σ, and a DDPM checkpoint's
# (VP on its linear ᾱ table, ε prediction, DDPM index timesteps; N = 100 keeps Diffusers' table-building schedulers
# quick to build).
VE_CONFIG: dict = {"timestep_type": "sigma"}
VP_DDPM_CONFIG = {
    "sde_type": "vp", "beta_schedule": "linear", "prediction_type": "epsilon", "timestep_type": "discrete",
    "num_train_timesteps": 100,
}
SDE_CONFIGS = {"ve": VE_CONFIG, "vp": VP_DDPM_CONFIG}


def config_without_private_keys(scheduler) -> dict:
    return {key: value for key, value in scheduler.config.items() if not key.startswith("_")}


def _distinct_names() -> list[str]:
    """One registry name per distinct sampler: names that build the same scheduler from a VE model's config ("pc" and
    "pc-ancestral" at the defaults, "pf", "pf-heun" and "probability-flow") are checked once, under the first."""
    seen: dict[tuple, str] = {}
    for name in SCHEDULERS:
        scheduler = build_scheduler(name, VE_CONFIG)
        public = config_without_private_keys(scheduler)
        key = (type(scheduler).__name__, tuple(sorted((k, str(v)) for k, v in public.items())))
        seen.setdefault(key, name)
    return list(seen.values())


NAMES = _distinct_names()
CASES = [(n, sde) for n in NAMES for sde in SDE_CONFIGS if sde in SCHEDULERS[n].scheduler_class._supported_sde_types]
CASE_IDS = [f"{name}-{sde}" for name, sde in CASES]
NUM_INFERENCE_STEPS = 4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 and device moves need CUDA")


def make(name: str, sde: str, **overrides) -> ScoreSchedulerMixin:
    return build_scheduler(name, {**SDE_CONFIGS[sde], **overrides})


def dummy_sample() -> torch.Tensor:
    """Diffusers' dummy sample: uniform values in a (4, 3, 8, 8) batch."""
    return torch.rand((4, 3, 8, 8), generator=make_generator(0))


def first_steps(scheduler, count: int | None = None, return_dict: bool = True, seed: int = 0) -> list:
    """The outputs of the first `count` steps (all where `None`) with Diffusers' dummy residual 0.1·sample, noise
    from `seed`."""
    scheduler.set_timesteps(NUM_INFERENCE_STEPS)
    sample, generator, outputs = dummy_sample(), make_generator(seed), []
    for timestep in scheduler.timesteps[:count]:
        output = scheduler.step(0.1 * sample, timestep, sample, generator=generator, return_dict=return_dict)
        outputs.append(output)
        sample = output.prev_sample if return_dict else output[0]
    return outputs


# ---- SchedulerCommonTest ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, sde", CASES, ids=CASE_IDS)
class TestSchedulerCommon:
    """Diffusers' `SchedulerCommonTest`, one check per test of it, on every registry scheduler."""

    def test_from_save_pretrained(self, name, sde, tmp_path):
        """`test_from_save_pretrained` / `check_over_configs` / `check_over_forward`: a saved and reloaded scheduler
        steps like the original, here over the whole run."""
        scheduler = make(name, sde)
        scheduler.save_config(tmp_path)
        loaded = type(scheduler).from_pretrained(tmp_path)
        for expected, got in zip(first_steps(scheduler), first_steps(loaded), strict=True):
            torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=0, atol=0)

    def test_from_pretrained(self, name, sde, tmp_path):
        """`test_from_pretrained`: the reloaded config is the saved one (Diffusers' `_use_default_values` aside)."""
        scheduler = make(name, sde)
        scheduler.save_pretrained(tmp_path)
        loaded = type(scheduler).from_pretrained(tmp_path)
        original = dict(scheduler.config)
        original.pop("_use_default_values", None)
        assert dict(loaded.config) == original

    def test_compatibles(self, name, sde):
        """`test_compatibles`: every class of `compatibles` builds from this config, and this class built back from
        that one has the same config; the keys it adds are no `__init__` argument."""
        scheduler = make(name, sde)
        compatibles = scheduler.compatibles
        assert compatibles and all(c is not None for c in compatibles)
        init_keys = set(inspect.signature(type(scheduler).__init__).parameters)
        for compatible in compatibles:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other = compatible.from_config(scheduler.config)
            back = type(scheduler).from_config(other.config)
            assert {k: v for k, v in back.config.items() if k in scheduler.config and k != "_use_default_values"} \
                == {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}, compatible.__name__
            assert not (set(back.config) - set(scheduler.config)) & init_keys, compatible.__name__

    def test_step_shape(self, name, sde):
        """`test_step_shape`: two steps give samples of the input's shape (the first two entries: ours step in
        order)."""
        first, second = first_steps(make(name, sde), 2)
        assert first.prev_sample.shape == second.prev_sample.shape == dummy_sample().shape

    def test_scheduler_outputs_equivalence(self, name, sde):
        """`test_scheduler_outputs_equivalence`: the tuple of `return_dict=False` holds the dataclass's values in its
        field order, the first two as DDPM's tuple (`prev_sample`, `pred_original_sample`)."""
        as_dict = first_steps(make(name, sde), 3)
        as_tuple = first_steps(make(name, sde), 3, return_dict=False)
        for output, output_tuple in zip(as_dict, as_tuple, strict=True):
            assert isinstance(output_tuple, tuple)
            assert list(output.keys())[:2] == ["prev_sample", "pred_original_sample"]
            for from_dict, from_tuple in zip(output.values(), output_tuple, strict=True):
                torch.testing.assert_close(from_tuple, from_dict, rtol=0, atol=1e-5)

    def test_scheduler_public_api(self, name, sde):
        """`test_scheduler_public_api`: `init_noise_sigma`, `scale_model_input` and `step`, and scaling keeps the
        shape."""
        scheduler = make(name, sde)
        assert isinstance(scheduler.init_noise_sigma, float) and callable(scheduler.step)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        sample = dummy_sample()
        assert scheduler.scale_model_input(sample, scheduler.timesteps[0]).shape == sample.shape

    @pytest.mark.parametrize("device", DEVICES)
    def test_add_noise_device(self, name, sde, device):
        """`test_add_noise_device`: `add_noise` at `timesteps[5][None]` of a 100-step run, on the sample's device."""
        scheduler = make(name, sde)
        scheduler.set_timesteps(100, device=device)
        assert scheduler.timesteps.device.type == device
        sample = dummy_sample().to(device)
        noised = scheduler.add_noise(sample, torch.randn_like(sample), scheduler.timesteps[5][None])
        assert noised.shape == sample.shape and noised.device.type == device

    def test_deprecated_kwargs(self, name, sde):
        """`test_deprecated_kwargs`: `**kwargs` in `__init__` exactly when `_deprecated_kwargs` names some."""
        scheduler_class = SCHEDULERS[name].scheduler_class
        has_kwargs = "kwargs" in inspect.signature(scheduler_class.__init__).parameters
        assert has_kwargs == bool(scheduler_class._deprecated_kwargs)

    def test_trained_betas(self, name, sde, tmp_path):
        """`test_trained_betas`: an explicit β table (a NumPy array) survives save and reload (VP; N = 2, the
        table's length)."""
        if sde != "vp":
            pytest.skip("VE has no β table")
        scheduler = make(name, sde, trained_betas=np.array([0.1, 0.3]), num_train_timesteps=2)
        scheduler.save_pretrained(tmp_path)
        loaded = type(scheduler).from_pretrained(tmp_path)
        assert loaded.config.trained_betas == [0.1, 0.3]
        timesteps = torch.tensor([0.0, 1.0])
        torch.testing.assert_close(loaded.sde.marginal_std(loaded.time_for_timestep(timesteps)),
                                   scheduler.sde.marginal_std(scheduler.time_for_timestep(timesteps)))
        torch.testing.assert_close(scheduler.sde.marginal_std(torch.tensor(0.0, dtype=torch.float64)),
                                   torch.tensor(0.1, dtype=torch.float64).sqrt())

    def test_getattr_is_correct(self, name, sde, recwarn):
        """`test_getattr_is_correct`: plain attributes read silently, config entries through the instance warn, a
        missing attribute raises the usual `AttributeError`."""
        scheduler = make(name, sde)
        scheduler.dummy_attribute = 5
        scheduler.register_to_config(test_attribute=5)
        assert scheduler.dummy_attribute == 5 and scheduler.save_pretrained == getattr(scheduler, "save_pretrained")
        assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
        with pytest.warns(FutureWarning):
            assert scheduler.test_attribute == 5
        with pytest.raises(AttributeError, match=re.escape(f"'{type(scheduler).__name__}' object has no attribute")):
            scheduler.does_not_exist  # noqa: B018

    @pytest.mark.parametrize("device", DEVICES)
    def test_set_timesteps_on_device(self, name, sde, device):
        """Diffusers' per-scheduler device tests: `set_timesteps(n, device=...)` puts `timesteps` there, and a run on
        that device matches the CPU's."""
        scheduler = make(name, sde)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS, device=device)
        assert scheduler.timesteps.device.type == device

    def test_custom_timesteps_and_sigmas(self, name, sde):
        """Diffusers' `test_custom_timesteps` / `test_custom_sigmas` (DDPM, Euler, …): a custom schedule given as the
        default grid's own timesteps or noise levels reproduces the default run; both, neither, increasing or
        out-of-range values raise a `ValueError` naming the argument. Annealed Langevin takes neither: its step-size
        rule is NCSN's for geometric levels, and Diffusers' `retrieve_timesteps` reads that from the signature."""
        scheduler = make(name, sde)
        parameters = inspect.signature(scheduler.set_timesteps).parameters
        if name == "annealed-langevin":
            assert "timesteps" not in parameters and "sigmas" not in parameters
            return
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        starts = scheduler.grid.times[:: scheduler.order][:NUM_INFERENCE_STEPS]
        custom_timesteps = scheduler.timestep_for_time(starts)
        custom_sigmas = scheduler.sde.noise_to_signal(starts)
        for kwargs in ({"timesteps": custom_timesteps.tolist()}, {"sigmas": custom_sigmas}):
            custom = make(name, sde)
            custom.set_timesteps(**kwargs)
            torch.testing.assert_close(custom.timesteps, scheduler.timesteps, rtol=1e-5, atol=1e-5)
            assert custom.num_inference_steps == NUM_INFERENCE_STEPS
        low, high = custom_timesteps.min().item(), custom_timesteps.max().item()
        bad = {
            "num_inference_steps": {"num_inference_steps": 3, "timesteps": custom_timesteps.tolist()},
            "sigmas": {"timesteps": custom_timesteps.tolist(), "sigmas": custom_sigmas.tolist()},
            "timesteps": {"timesteps": custom_timesteps.flip(0).tolist()},
            "`timesteps` must lie": {"timesteps": [high * 3 + 10, low]},
            "`sigmas` must": {"sigmas": [float(custom_sigmas[0]) * 2, float(custom_sigmas[-1])]},
            "finite": {"sigmas": [float("nan")]},
        }
        for message, kwargs in bad.items():
            with pytest.raises(ValueError, match=re.escape(message)):
                make(name, sde).set_timesteps(**kwargs)

    def test_overridden_keys_stick_through_swaps(self, name, sde):
        """The offline part of `test_default_arguments_not_in_config`: a swap gives keys the source left at its
        defaults the target's defaults, while keys set explicitly (and the model's conventions) stick through further
        swaps."""
        scheduler = make(name, sde)
        swapped = ProbabilityFlowScheduler.from_config(scheduler.config, time_spacing="uniform")
        assert swapped.config.time_spacing == "uniform"
        again = type(scheduler).from_config(swapped.config)
        for key in ("prediction_type", "timestep_type", "num_train_timesteps"):
            assert again.config[key] == scheduler.config[key], key
        assert ProbabilityFlowScheduler.from_config(again.config).config.time_spacing == "uniform"


def test_diffusers_configs_convert():
    """The direction `_compatibles` promises: every Diffusers class it names that is installed converts into each
    score scheduler that samples its SDE (ᾱ-table configs → VP, `ScoreSdeVeScheduler` → VE)."""
    ddpm_config = DDPMScheduler(num_train_timesteps=100).config
    for scheduler_class in ScoreSchedulerMixin._score_scheduler_classes:
        for class_name in scheduler_class._compatibles:
            diffusers_class = getattr(diffusers, class_name)
            if isinstance(diffusers_class, DummyObject):
                continue  # an optional dependency (torchsde) is missing
            is_ve = diffusers_class is ScoreSdeVeScheduler
            source = diffusers_class() if is_ve else diffusers_class.from_config(ddpm_config)
            converted = scheduler_class.from_config(source.config)
            assert converted.config.get("sde_type", "ve") == ("ve" if is_ve else "vp")
    names = {member.name for member in KarrasDiffusionSchedulers} - {"EDMEulerScheduler"}
    assert names <= set(ProbabilityFlowScheduler._compatibles)


def test_heun_order_and_layout_match_diffusers_heun():
    """Diffusers' `HeunDiscreteScheduler` has `order` 2 and lays out 2n − 1 entries, and its pipelines slice
    `timesteps[t_start * order:]`: the probability-flow Heun solver does the same."""
    ours, theirs = ProbabilityFlowScheduler(solver="heun"), HeunDiscreteScheduler()
    for n in (1, 2, 5):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert len(ours.timesteps) == len(theirs.timesteps) == 2 * n - 1
    assert ours.order == theirs.order == 2


# ---- PipelineTesterMixin ----------------------------------------------------------------------------------------

PIPELINE_STEPS = 2
IMAGE_SIZE = 8


def tiny_classifier() -> NoiseConditionalClassifier:
    torch.manual_seed(1)
    return NoiseConditionalClassifier(
        sample_size=IMAGE_SIZE, in_channels=1, num_classes=3, block_out_channels=(8,), norm_num_groups=4
    ).eval()


def pipeline_scheduler_config(name: str) -> dict:
    """The DDPM checkpoint's convention where the scheduler samples VP, else (annealed Langevin) a σ-fed score model."""
    supported = SCHEDULERS[name].scheduler_class._supported_sde_types
    return VP_DDPM_CONFIG if "vp" in supported else VE_CONFIG


def dummy_components(name: str, classifier: bool = False) -> dict:
    return {
        "unet": tiny_unet(),
        "scheduler": build_scheduler(name, pipeline_scheduler_config(name)),
        "classifier": tiny_classifier() if classifier else None,
    }


def dummy_pipeline(name: str, classifier: bool = False) -> ScoreGuidedPipeline:
    pipe = ScoreGuidedPipeline(**dummy_components(name, classifier))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_inputs(seed: int = 0, **overrides) -> dict:
    return {"num_inference_steps": PIPELINE_STEPS, "generator": make_generator(seed), "output_type": "np", **overrides}


def images(pipe, **kwargs) -> np.ndarray:
    return np.asarray(pipe(**dummy_inputs(**kwargs))[0])


@pytest.mark.parametrize("name", NAMES)
class TestPipelineCommon:
    """Diffusers' `PipelineTesterMixin`, one check per test of it, on `ScoreGuidedPipeline` with every registry
    scheduler."""

    def test_save_load_local(self, name, tmp_path):
        """`test_save_load_local`: a saved and reloaded pipeline gives the same images."""
        pipe = dummy_pipeline(name)
        expected = images(pipe)
        pipe.save_pretrained(tmp_path, safe_serialization=False)
        loaded = ScoreGuidedPipeline.from_pretrained(tmp_path)
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded.scheduler) is type(pipe.scheduler)
        assert np.abs(images(loaded) - expected).max() < 5e-4

    def test_save_load_optional_components(self, name, tmp_path):
        """`test_save_load_optional_components`: the optional classifier left `None` stays `None` after reloading."""
        pipe = dummy_pipeline(name, classifier=True)
        pipe.classifier = None
        expected = images(pipe)
        pipe.save_pretrained(tmp_path)
        loaded = ScoreGuidedPipeline.from_pretrained(tmp_path)
        loaded.set_progress_bar_config(disable=True)
        assert loaded.classifier is None
        assert np.abs(images(loaded) - expected).max() < 1e-4

    def test_pipeline_call_signature(self, name):
        """`test_pipeline_call_signature` with Diffusers' unconditional-generation parameters (`DDPMPipeline`'s
        `batch_size`) and its required optional ones, `latents` included."""
        parameters = inspect.signature(ScoreGuidedPipeline.__call__).parameters
        optional = {key for key, value in parameters.items() if value.default is not inspect.Parameter.empty}
        required_optional = {"batch_size", "num_inference_steps", "generator", "latents", "output_type",
                             "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
        assert required_optional <= optional

    def test_inference_batch_consistent(self, name):
        """`test_inference_batch_consistent`: a batch of 2 with a generator list gives 2 images."""
        pipe = dummy_pipeline(name)
        assert len(pipe(**dummy_inputs(batch_size=2, generator=per_sample_generators([0, 1])))[0]) == 2

    def test_inference_batch_single_identical(self, name):
        """`test_inference_batch_single_identical`: image 0 of a batch of 3 drawn with generators seeded 0, 1, 2 is
        the image drawn alone with a generator seeded 0 (`tests/test_reproducibility.py` holds it per scheduler with
        the largest difference)."""
        pipe = dummy_pipeline(name)
        alone = images(pipe)
        batch = images(pipe, batch_size=3, generator=per_sample_generators([0, 1, 2]))
        assert batch.shape[0] == 3 and np.abs(batch[0] - alone[0]).max() < 1e-4

    def test_dict_tuple_outputs_equivalent(self, name):
        """`test_dict_tuple_outputs_equivalent`."""
        pipe = dummy_pipeline(name)
        as_dict = pipe(**dummy_inputs()).images
        (as_tuple,) = pipe(**dummy_inputs(), return_dict=False)
        assert np.abs(as_dict - as_tuple).max() < 1e-4

    def test_components_function(self, name):
        """`test_components_function`: `components` holds exactly the components the pipeline was built with."""
        components = dummy_components(name)
        pipe = ScoreGuidedPipeline(**components)
        assert set(pipe.components) == set(components)

    def test_to_dtype(self, name):
        """`test_to_dtype`: `to(dtype=torch.float16)` casts every module component."""
        pipe = ScoreGuidedPipeline(**dummy_components(name, classifier=True))
        modules = [c for c in pipe.components.values() if hasattr(c, "dtype")]
        assert all(module.dtype == torch.float32 for module in modules)
        pipe.to(dtype=torch.float16)
        assert all(module.dtype == torch.float16 for module in modules)

    def test_progress_bar(self, name):
        """`test_progress_bar`: the bar runs to its end, one tick per model evaluation, and disabling it silences it."""
        pipe = ScoreGuidedPipeline(**dummy_components(name))
        with io.StringIO() as stderr, contextlib.redirect_stderr(stderr):
            pipe(**dummy_inputs())
            text = stderr.getvalue()
        total = len(pipe.scheduler.timesteps)
        assert f"{total}/{total}" in text
        pipe.set_progress_bar_config(disable=True)
        with io.StringIO() as stderr, contextlib.redirect_stderr(stderr):
            pipe(**dummy_inputs())
            assert stderr.getvalue() == ""

    def test_pt_np_pil_outputs_equivalent(self, name):
        """`PipelineLatentTesterMixin.test_pt_np_pil_outputs_equivalent`."""
        pipe = dummy_pipeline(name)
        as_pt = pipe(**dummy_inputs(output_type="pt"))[0]
        as_np = pipe(**dummy_inputs(output_type="np"))[0]
        as_pil = pipe(**dummy_inputs(output_type="pil"))[0]
        assert np.abs(as_pt.cpu().numpy().transpose(0, 2, 3, 1) - as_np).max() < 1e-4
        assert np.abs(np.asarray(as_pil[0], dtype=np.float64) - (as_np[0, ..., 0] * 255).round()).max() < 2

    def test_generator_determinism_and_latents(self, name):
        """The seed contract Diffusers' tests rely on (`get_generator(seed)`): the same seed gives the same images,
        and `latents` drawn from it, with the rest of its stream passed as `generator`, give them too (the initial
        noise before `init_noise_sigma`, as Diffusers' `prepare_latents` takes it)."""
        pipe = dummy_pipeline(name)
        expected = images(pipe, seed=3)
        np.testing.assert_array_equal(images(pipe, seed=3), expected)
        generator = make_generator(3)
        latents = torch.randn((1, 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
        np.testing.assert_allclose(images(pipe, latents=latents, generator=generator), expected, rtol=0, atol=1e-6)

    def test_callback_inputs(self, name):
        """`test_callback_inputs`: the callback gets exactly the tensors asked for among `_callback_tensor_inputs`
        ("latents" is the sample under Diffusers' name), and zeroing "latents" at the last step gives a zero output."""
        pipe = dummy_pipeline(name)

        def only_allowed(pipe, step_index, timestep, callback_kwargs):
            assert set(callback_kwargs) <= set(pipe._callback_tensor_inputs)
            return callback_kwargs

        def all_of_them(pipe, step_index, timestep, callback_kwargs):
            assert set(callback_kwargs) == set(pipe._callback_tensor_inputs)
            return callback_kwargs

        def zero_at_the_end(pipe, step_index, timestep, callback_kwargs):
            if step_index == pipe.num_timesteps - 1:
                callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
            return callback_kwargs

        pipe(**dummy_inputs(output_type="latent"), callback_on_step_end=only_allowed,
             callback_on_step_end_tensor_inputs=["latents"])
        pipe(**dummy_inputs(output_type="latent"), callback_on_step_end=all_of_them,
             callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
        output = pipe(**dummy_inputs(output_type="latent"), callback_on_step_end=zero_at_the_end,
                      callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)[0]
        assert float(output.abs().sum()) == 0

    def test_cfg(self, name):
        """`test_cfg` (classifier guidance here): the images keep their shape as the guidance scale changes."""
        pipe = dummy_pipeline(name, classifier=True)
        weak = images(pipe, guidance_scale=1.0, class_labels=1)
        strong = images(pipe, guidance_scale=7.5, class_labels=1)
        assert weak.shape == strong.shape

    def test_callback_cfg(self, name):
        """`test_callback_cfg`: a step-end callback raising `pipe._guidance_scale` by 1 each step leaves
        `pipe.guidance_scale` raised by `pipe.num_timesteps`, and the raised scale guides the later steps."""
        pipe = dummy_pipeline(name, classifier=True)

        def raise_guidance(pipe, step_index, timestep, callback_kwargs):
            pipe._guidance_scale += 1.0
            return callback_kwargs

        scales, model_output = [], pipe._model_output

        def recording_model_output(*args):
            scales.append(args[-2])
            return model_output(*args)

        pipe._model_output = recording_model_output
        images(pipe, guidance_scale=2.0, class_labels=1, callback_on_step_end=raise_guidance)
        assert pipe.guidance_scale == 2.0 + pipe.num_timesteps == 2.0 + len(scales)
        assert scales == [2.0 + step for step in range(len(scales))]

    @requires_cuda
    def test_to_device_and_float16(self, name):
        """`test_to_device`, `test_float16_inference`: on CUDA every component moves, and float16 images stay within
        5e-2 of float32 ones."""
        pipe = dummy_pipeline(name).to("cuda")
        assert all(c.device.type == "cuda" for c in pipe.components.values() if hasattr(c, "device"))
        expected = images(pipe)
        assert not np.isnan(expected).any()
        half = dummy_pipeline(name).to("cuda", torch.float16)
        assert np.abs(images(half) - expected).max() < 5e-2


def test_serialization_and_loading_with_variants(tmp_path):
    """`test_serialization_with_variants`, `test_loading_with_variants`,
    `test_loading_with_incorrect_variants_raises_error`: a pipeline saved with `variant="fp16"` writes each module's
    weights under the variant's name, loads back with it to the same images, and refuses a variant it lacks."""
    pipe = dummy_pipeline("pf", classifier=True)
    expected = images(pipe, class_labels=1, guidance_scale=1.0)
    pipe.save_pretrained(tmp_path, variant="fp16")
    for component in ("unet", "classifier"):
        assert [f.name for f in (tmp_path / component).glob("*.safetensors")] == [
            "diffusion_pytorch_model.fp16.safetensors"
        ]
    loaded = ScoreGuidedPipeline.from_pretrained(tmp_path, variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(images(loaded, class_labels=1, guidance_scale=1.0) - expected).max() < 1e-4
    with pytest.raises(ValueError, match="variant"):
        ScoreGuidedPipeline.from_pretrained(tmp_path, variant="no_such_variant")


@pytest.mark.parametrize("enum", list(KarrasDiffusionSchedulers), ids=lambda e: e.name)
def test_karras_schedulers_shape(enum):
    """`PipelineKarrasSchedulerTesterMixin.test_karras_schedulers_shape`, adapted: the pipeline built with each Karras
    scheduler (configured from a DDPM checkpoint's) converts it to a score scheduler, or refuses the one without a
    DDPM ᾱ table (`EDMEulerScheduler`) with a `ValueError`; every image has the same shape."""
    scheduler_class = getattr(diffusers, enum.name)
    if isinstance(scheduler_class, DummyObject):
        pytest.skip(f"{enum.name} needs an optional dependency")
    ddpm_config = DDPMScheduler(num_train_timesteps=100).config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = scheduler_class.from_config(ddpm_config)
    if enum.name == "EDMEulerScheduler":
        with pytest.raises(ValueError, match="EDMEulerScheduler"):
            ScoreGuidedPipeline(unet=tiny_unet(), scheduler=scheduler)
        return
    pipe = ScoreGuidedPipeline(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    assert images(pipe).shape == (1, IMAGE_SIZE, IMAGE_SIZE, 1)
