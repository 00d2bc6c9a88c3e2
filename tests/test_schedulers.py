"""The common scheduler contract: one test mixin that every score scheduler passes, over many configs, without
special cases (the way Diffusers' `SchedulerCommonTest` works), plus input validation.

Each test class names its scheduler and a list of configs; `conftest.pytest_generate_tests` runs every test once
per config. The exact-score model of a Gaussian mixture stands in for a network, so every number is checkable.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import pytest
import torch
from helpers import (
    DATA_DIM,
    IMAGE_SHAPE,
    make_generator,
    per_sample_generators,
    prior_sample,
    sample_with_seed,
)

from score_diffusers import (
    AnnealedLangevinScheduler,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    SDEDPMSolverScheduler,
    sampling,
)
from score_diffusers.testing import ExactScoreModel, GaussianMixture, run_loop
from score_diffusers.checks import SamplingError
from score_diffusers.schedulers import ScoreSchedulerMixin
from score_diffusers.schedulers.scheduling_predictor_corrector import CORRECTOR_NORMS, CORRECTORS, PREDICTORS
from score_diffusers.schedulers.scheduling_probability_flow import SOLVERS, TIME_SPACINGS
from score_diffusers.schedulers.scheduling_utils import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    SDE_TYPES,
    TIMESTEP_TYPES,
)

BATCH_SIZE = 4
NUM_INFERENCE_STEPS = 4
FLAT_SHAPE = (BATCH_SIZE, DATA_DIM)
IMAGE_BATCH_SHAPE = (BATCH_SIZE, *IMAGE_SHAPE)


# ---- helpers -------------------------------------------------------------------------------------------------


def public_config(scheduler) -> dict[str, Any]:
    """The registered config without Diffusers' private bookkeeping keys."""
    return {key: value for key, value in scheduler.config.items() if not key.startswith("_")}


def assert_same_sampler(first, second, mixture: GaussianMixture) -> None:
    """Two schedulers that claim to be the same: same class, config, timesteps and seeded samples."""
    assert type(first) is type(second)
    assert public_config(first) == public_config(second)
    first.set_timesteps(NUM_INFERENCE_STEPS)
    second.set_timesteps(NUM_INFERENCE_STEPS)
    torch.testing.assert_close(first.timesteps, second.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(
        sample_with_seed(first, mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=7),
        sample_with_seed(second, mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=7),
        rtol=0,
        atol=0,
    )


def forward_process_coefficients(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) at model timesteps, derived from the documented conventions rather than the scheduler's own mapping.

    `"continuous"` is t; `"discrete"` is t·(N − 1) for VP / sub-VP and (1 − t)·(N − 1) for VE; `"sigma"` is the
    noise-to-signal ratio r = σ_t/α_t, which fixes α in closed form: 1 for VE, 1/√(1 + r²) for VP (σ² = 1 − α²) and
    (√(r² + 4) − r)/2 for sub-VP (σ = 1 − α²).
    """
    timesteps = timesteps.to(torch.float64)
    sde_type = scheduler.config.get("sde_type", "ve")
    timestep_type = scheduler.config.timestep_type
    if timestep_type == "sigma":
        ratio = timesteps
        alpha = {
            "ve": torch.ones_like(ratio),
            "vp": 1 / torch.sqrt(1 + ratio**2),
            "subvp": (torch.sqrt(ratio**2 + 4) - ratio) / 2,
        }[sde_type]
        return alpha, ratio * alpha
    scale = scheduler.config.num_train_timesteps - 1
    if timestep_type == "continuous":
        t = timesteps
    else:
        t = 1 - timesteps / scale if sde_type == "ve" else timesteps / scale
    return scheduler.sde.mean_coeff(t), scheduler.sde.marginal_std(t)


def is_multistep(scheduler) -> bool:
    """Whether the scheduler's steps combine past x̂₀ (DPM-Solver++ 2M / 3M, UniPC)."""
    multistep_solvers = ("dpmpp_2m", "dpmpp_3m", "unipc")
    return scheduler.config.get("solver") in multistep_solvers or scheduler.config.get("solver_order", 1) > 1


def assert_error_names_choices(error: pytest.ExceptionInfo, argument: str, accepted: tuple[str, ...]) -> None:
    message = str(error.value)
    assert argument in message
    for value in accepted:
        assert re.search(rf"\b{re.escape(value)}\b", message), f"{value!r} missing from: {message}"


# ---- the common mixin ----------------------------------------------------------------------------------------


class ScoreSchedulerCommonTest:
    """The contract every score scheduler meets; subclasses set `scheduler_class`, `configs` and the documented
    number of model evaluations."""

    scheduler_class: ClassVar[type[ScoreSchedulerMixin]]
    configs: ClassVar[list[dict[str, Any]]]

    def expected_evaluations(self, scheduler, num_inference_steps: int) -> int:
        """len(timesteps) as the scheduler's docstring states it."""
        raise NotImplementedError

    def per_sample_reproducible(self, scheduler) -> bool:
        """Whether a sample's trajectory is independent of the rest of its batch (see `corrector_norm`)."""
        return True

    def make(self, config: dict[str, Any]) -> ScoreSchedulerMixin:
        return self.scheduler_class(**config)

    # -- timesteps --

    @pytest.mark.parametrize("num_inference_steps", [1, 2, 5])
    def test_one_model_call_per_timestep(self, config, mixture, num_inference_steps: int):
        scheduler = self.make(config)
        scheduler.set_timesteps(num_inference_steps)
        assert len(scheduler.timesteps) == self.expected_evaluations(scheduler, num_inference_steps)
        assert scheduler.timesteps.dtype == torch.float32
        model = ExactScoreModel(mixture, scheduler)
        sample = prior_sample(scheduler, FLAT_SHAPE, make_generator(0))
        final = run_loop(scheduler, model, sample, num_inference_steps, make_generator(1))
        assert model.calls == len(scheduler.timesteps)
        assert bool(torch.isfinite(final).all())

    def test_noise_level_never_increases_along_timesteps(self, config):
        scheduler = self.make(config)
        scheduler.set_timesteps(6)
        times = scheduler.time_for_timestep(scheduler.timesteps)
        ratios = scheduler.sde.noise_to_signal(times)
        if config.get("s_churn"):
            # Karras et al.'s churn raises the noise level of some entries (Heun's included above the entry before
            # them), but never above the start.
            deterministic = self.make({**config, "s_churn": 0.0})
            deterministic.set_timesteps(6)
            raised = scheduler.timesteps != deterministic.timesteps
            assert bool(raised.any())
            assert bool((ratios <= ratios[0] * (1 + 1e-6)).all())
        else:
            assert bool((ratios.diff() <= 1e-6 * ratios[:-1]).all())
        assert float(times[0]) == pytest.approx(1.0, abs=1e-6)

    def test_set_timesteps_resets_all_step_state(self, config, mixture):
        fresh = sample_with_seed(self.make(config), mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=3)
        scheduler = self.make(config)
        # Abandon a run part-way (mid Heun pair, mid corrector sequence), then start over twice.
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        model = ExactScoreModel(mixture, scheduler)
        sample = prior_sample(scheduler, FLAT_SHAPE, make_generator(9))
        for timestep in scheduler.timesteps[:3]:
            sample = scheduler.step(model(sample, timestep), timestep, sample, generator=make_generator(9)).prev_sample
        assert scheduler.step_index == min(3, len(scheduler.timesteps))
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        assert scheduler.step_index == 0
        for _ in range(2):
            rerun = sample_with_seed(scheduler, mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=3)
            torch.testing.assert_close(rerun, fresh, rtol=0, atol=0)

    # -- step outputs --

    @pytest.mark.parametrize("shape", [FLAT_SHAPE, IMAGE_BATCH_SHAPE], ids=["2d", "4d"])
    def test_step_output_shapes(self, config, mixture, shape: tuple[int, ...]):
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        sample = prior_sample(scheduler, shape, make_generator(0))
        timestep = scheduler.timesteps[0]
        output = scheduler.step(ExactScoreModel(mixture, scheduler)(sample, timestep), timestep, sample)
        for name in ("prev_sample", "prev_sample_mean", "pred_original_sample"):
            value = getattr(output, name)
            assert value.shape == sample.shape and value.dtype == sample.dtype, name
        assert scheduler.scale_model_input(sample, timestep) is sample

    def test_tuple_and_dataclass_outputs_agree(self, config, mixture):
        as_dict, as_tuple = self.make(config), self.make(config)
        as_dict.set_timesteps(NUM_INFERENCE_STEPS)
        as_tuple.set_timesteps(NUM_INFERENCE_STEPS)
        model = ExactScoreModel(mixture, as_dict)
        sample = prior_sample(as_dict, FLAT_SHAPE, make_generator(0))
        dict_generator, tuple_generator = make_generator(1), make_generator(1)
        for timestep in as_dict.timesteps:
            model_output = model(sample, timestep)
            output = as_dict.step(model_output, timestep, sample, generator=dict_generator)
            output_tuple = as_tuple.step(model_output, timestep, sample, generator=tuple_generator, return_dict=False)
            assert isinstance(output_tuple, tuple) and len(output_tuple) == 3
            for from_dict, from_tuple in zip(output.to_tuple(), output_tuple, strict=True):
                torch.testing.assert_close(from_dict, from_tuple, rtol=0, atol=0)
            sample = output.prev_sample

    # -- persistence --

    def test_save_pretrained_round_trip(self, config, mixture, tmp_path):
        scheduler = self.make(config)
        scheduler.save_pretrained(tmp_path / "scheduler")
        loaded = self.scheduler_class.from_pretrained(tmp_path, subfolder="scheduler")
        assert_same_sampler(scheduler, loaded, mixture)

    def test_from_config_round_trip(self, config, mixture):
        scheduler = self.make(config)
        assert_same_sampler(scheduler, self.scheduler_class.from_config(scheduler.config), mixture)

    # -- randomness --

    def test_generator_determinism(self, config, mixture):
        scheduler = self.make(config)
        first = sample_with_seed(scheduler, mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=11)
        again = sample_with_seed(scheduler, mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=11)
        other = sample_with_seed(scheduler, mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=12)
        torch.testing.assert_close(first, again, rtol=0, atol=0)
        assert float((first - other).abs().max()) > 1e-3

    def test_per_sample_generators(self, config, mixture):
        """A list of generators gives each sample of a batch the result it gets alone, unless the step sizes are
        shared across the batch (`corrector_norm="batch"`), where the batch must visibly change it."""
        scheduler = self.make(config)
        model = ExactScoreModel(mixture, scheduler)
        seeds = [21, 22, 23]

        def run(sample_seeds: list[int]) -> torch.Tensor:
            initial = prior_sample(scheduler, (len(sample_seeds), DATA_DIM), per_sample_generators(sample_seeds))
            generators = per_sample_generators([seed + 100 for seed in sample_seeds])
            return run_loop(scheduler, model, initial, NUM_INFERENCE_STEPS, generators)

        batch = run(seeds)
        alone = torch.cat([run([seed]) for seed in seeds])
        if self.per_sample_reproducible(scheduler):
            torch.testing.assert_close(batch, alone, rtol=1e-6, atol=1e-6)
        else:
            assert float((batch - alone).abs().max()) > 1e-3

    # -- dtypes and shapes --

    def test_float64_and_float32_samples(self, config, mixture):
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        model = ExactScoreModel(mixture, scheduler)
        sample = prior_sample(scheduler, FLAT_SHAPE, make_generator(0), dtype=torch.float64)
        generator = make_generator(1)
        # Along a float64 trajectory, the same step in float32 gives the same noise-free estimate, up to float32
        # rounding of x_t amplified by x̂₀ = (x_t + σ_t²·score)/α_t.
        mirror = self.make(config)
        mirror.set_timesteps(NUM_INFERENCE_STEPS)
        for timestep in scheduler.timesteps:
            model_output = model(sample, timestep)
            output = scheduler.step(model_output, timestep, sample, generator=generator)
            output32 = mirror.step(model_output.float(), timestep, sample.float(), generator=make_generator(1))
            assert output.prev_sample.dtype == output.pred_original_sample.dtype == torch.float64
            assert output32.prev_sample.dtype == output32.pred_original_sample.dtype == torch.float32
            alpha, _ = forward_process_coefficients(scheduler, timestep.reshape(1))
            tolerance = 1e-5 * (1 + float(sample.abs().max())) / float(alpha)
            torch.testing.assert_close(
                output32.pred_original_sample.double(), output.pred_original_sample, rtol=1e-4, atol=tolerance
            )
            sample = output.prev_sample
        assert bool(torch.isfinite(sample).all())

    def test_image_shaped_samples_match_flat_ones(self, config, mixture):
        """Coefficients broadcast by the sample's own number of dimensions: a (B, 1, 4, 4) run is the (B, 16) run."""
        scheduler = self.make(config)
        images = sample_with_seed(scheduler, mixture, IMAGE_BATCH_SHAPE, NUM_INFERENCE_STEPS, seed=5)
        flat = sample_with_seed(scheduler, mixture, FLAT_SHAPE, NUM_INFERENCE_STEPS, seed=5)
        assert images.shape == IMAGE_BATCH_SHAPE
        torch.testing.assert_close(images.reshape(FLAT_SHAPE), flat, rtol=1e-6, atol=1e-6)

    # -- training --

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_add_noise_is_the_forward_process(self, config, dtype: torch.dtype):
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        timesteps = scheduler.timesteps.unique()
        generator = make_generator(4)
        shape = (len(timesteps), *IMAGE_SHAPE)
        original = torch.randn(shape, generator=generator, dtype=dtype)
        noise = torch.randn(shape, generator=generator, dtype=dtype)
        alpha, sigma = forward_process_coefficients(scheduler, timesteps)
        expected = alpha[:, None, None, None] * original.double() + sigma[:, None, None, None] * noise.double()
        noisy = scheduler.add_noise(original, noise, timesteps)
        assert noisy.dtype == dtype
        torch.testing.assert_close(noisy.double(), expected, rtol=1e-5, atol=1e-5)
        # One scalar timestep for the whole batch.
        alpha0, sigma0 = forward_process_coefficients(scheduler, timesteps[:1])
        single = scheduler.add_noise(original, noise, timesteps[0])
        expected_single = alpha0 * original.double() + sigma0 * noise.double()
        torch.testing.assert_close(single.double(), expected_single, rtol=1e-5, atol=1e-5)

    # -- misuse --

    @pytest.mark.parametrize("num_inference_steps", [0, -3, 2.5, "4", True, None])
    def test_bad_num_inference_steps(self, config, num_inference_steps: Any):
        with pytest.raises(ValueError, match="num_inference_steps"):
            self.make(config).set_timesteps(num_inference_steps)

    def test_step_before_set_timesteps(self, config):
        sample = torch.zeros(FLAT_SHAPE)
        with pytest.raises(ValueError, match="set_timesteps"):
            self.make(config).step(sample, 1.0, sample)

    def test_mismatched_model_output_shape(self, config):
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        sample = torch.zeros(FLAT_SHAPE)
        with pytest.raises(ValueError, match="model_output"):
            scheduler.step(torch.zeros(BATCH_SIZE, DATA_DIM - 1), scheduler.timesteps[0], sample)

    @pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
    @pytest.mark.parametrize("offset", [0, 1], ids=["middle", "after_middle"])
    def test_non_finite_model_output_mid_sampling(self, config, mixture, bad_value: float, offset: int):
        # Two neighbouring entries: a corrector and a predictor step for the predictor-corrector scheduler.
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        model = ExactScoreModel(mixture, scheduler)
        sample = prior_sample(scheduler, FLAT_SHAPE, make_generator(0))
        middle = len(scheduler.timesteps) // 2 + offset
        for timestep in scheduler.timesteps[:middle]:
            sample = scheduler.step(model(sample, timestep), timestep, sample).prev_sample
        model_output = model(sample, scheduler.timesteps[middle])
        model_output[1, 3] = bad_value
        with pytest.raises(SamplingError, match="model_output"):
            scheduler.step(model_output, scheduler.timesteps[middle], sample)

    # -- the public grid and starting mid-run --

    def test_grid_stands_for_each_entry_of_timesteps(self, config):
        scheduler = self.make(config)
        scheduler.set_timesteps(5)
        grid, n = scheduler.grid, len(scheduler.timesteps)
        for values in (grid.times, grid.alphas, grid.sigmas, grid.next_times, grid.next_alphas, grid.next_sigmas):
            assert values.shape == (n,) and values.dtype == torch.float64
        torch.testing.assert_close(scheduler.timestep_for_time(grid.times).float(), scheduler.timesteps)
        torch.testing.assert_close(grid.alphas, scheduler.sde.mean_coeff(grid.times))
        torch.testing.assert_close(grid.sigmas, scheduler.sde.marginal_std(grid.times))
        # Each step returns a sample where the next entry evaluates the model.
        torch.testing.assert_close(grid.next_times[:-1], grid.times[1:], rtol=0, atol=0)
        torch.testing.assert_close(grid.next_sigmas[:-1], grid.sigmas[1:], rtol=0, atol=0)
        # The last step returns the data estimate, except annealed Langevin without its denoising step and the
        # Euler–Maruyama predictor, whose grids name the time they stop at.
        ends_on_data = config.get("final_denoising", True) and config.get("predictor") != "euler_maruyama"
        if ends_on_data:
            assert (float(grid.next_sigmas[-1]), float(grid.next_alphas[-1])) == (0.0, 1.0)
        else:
            assert float(grid.next_sigmas[-1]) == float(scheduler.sde.marginal_std(grid.next_times[-1]))
            assert float(grid.next_alphas[-1]) == float(scheduler.sde.mean_coeff(grid.next_times[-1]))

    def test_order_slices_timesteps_at_its_time_points(self, config):
        """Diffusers' image-to-image slicing `timesteps[t_start * order:]` starts on a new time point for every
        t_start < num_inference_steps, and a run may begin there."""
        scheduler = self.make(config)
        scheduler.set_timesteps(5)
        starts = scheduler.grid.times[:: scheduler.order][:5]
        # Heun lays out 2n − 1 entries, as Diffusers' does: the last point is one entry.
        assert len(starts) == 5 and len(scheduler.timesteps) >= 4 * scheduler.order + 1
        if not config.get("s_churn"):
            assert bool((starts.diff() < 0).all()), starts
        scheduler.set_begin_index(3 * scheduler.order)

    def test_begin_index_resumes_a_run(self, config, mixture):
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        model = ExactScoreModel(mixture, scheduler)
        # A run may begin at a multiple of `order` (Heun's second evaluations are the odd entries).
        begin = len(scheduler.timesteps) // 2 // scheduler.order * scheduler.order
        generator = make_generator(3)
        sample = prior_sample(scheduler, FLAT_SHAPE, generator)
        for index, timestep in enumerate(scheduler.timesteps):
            if index == begin:
                resumed_sample, state = sample.clone(), generator.get_state()
            sample = scheduler.step(model(sample, timestep), timestep, sample, generator=generator).prev_sample

        resumed = self.make(config)
        resumed.set_timesteps(NUM_INFERENCE_STEPS)
        resumed.set_begin_index(begin)
        assert resumed.step_index == begin == resumed.begin_index
        generator.set_state(state)
        for timestep in resumed.timesteps[begin:]:
            resumed_sample = resumed.step(model(resumed_sample, timestep), timestep, resumed_sample,
                                          generator=generator).prev_sample
        if is_multistep(resumed):
            # A multistep run started mid-way has no history: its first step is first order.
            assert bool(torch.isfinite(resumed_sample).all())
        else:
            torch.testing.assert_close(resumed_sample, sample, rtol=0, atol=0)
        with pytest.raises(ValueError, match="before the run's first `step`"):
            resumed.set_begin_index(0)

    def test_begin_index_out_of_range(self, config):
        scheduler = self.make(config)
        with pytest.raises(ValueError, match="set_timesteps"):
            scheduler.set_begin_index(0)
        scheduler.set_timesteps(3)
        for bad in (len(scheduler.timesteps), -1, 1.0):
            with pytest.raises(ValueError, match="begin_index"):
                scheduler.set_begin_index(bad)

    def test_stepping_past_the_end(self, config, mixture):
        scheduler = self.make(config)
        model = ExactScoreModel(mixture, scheduler)
        sample = run_loop(scheduler, model, prior_sample(scheduler, FLAT_SHAPE, make_generator(0)), NUM_INFERENCE_STEPS)
        last = scheduler.timesteps[-1]
        with pytest.raises(ValueError, match="timesteps"):
            scheduler.step(model(sample, last), last, sample)

    def test_timestep_that_is_not_the_next_entry(self, config):
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        sample = torch.zeros(FLAT_SHAPE)
        assert float(scheduler.timesteps[-1]) != float(scheduler.timesteps[0])
        with pytest.raises(ValueError, match="timestep"):
            scheduler.step(sample, scheduler.timesteps[-1], sample)

    def test_generator_list_must_be_one_per_sample(self, config):
        """A list of generators longer or shorter than the batch, or something else than generators, is refused before
        the step changes any state."""
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        sample, timestep = torch.zeros(FLAT_SHAPE), scheduler.timesteps[0]
        too_many, too_few = per_sample_generators(range(BATCH_SIZE + 1)), per_sample_generators(range(BATCH_SIZE - 1))
        for generator in (too_many, too_few, 0):
            with pytest.raises(ValueError, match="`generator` must be"):
                scheduler.step(sample, timestep, sample, generator=generator)
        assert scheduler.step_index == 0

    def test_timestep_tensor_is_one_entry_for_the_whole_batch(self, config, mixture):
        """One timestep per sample (or per row of a doubled batch) is accepted when all are the current entry; entries
        that differ are refused."""
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        sample, timesteps = prior_sample(scheduler, FLAT_SHAPE, make_generator(0)), scheduler.timesteps
        model_output = ExactScoreModel(mixture, scheduler)(sample, timesteps[0])
        differing = torch.cat([timesteps[:1].expand(BATCH_SIZE - 1), timesteps[-1:]])
        for bad in (differing, timesteps[:0]):
            with pytest.raises(ValueError, match="`timestep` must be"):
                scheduler.step(model_output, bad, sample)
        scheduler.step(model_output, timesteps[:1].expand(BATCH_SIZE), sample)
        assert scheduler.step_index == 1
        if len(timesteps) > 1:
            scheduler.step(model_output, timesteps[1:2].expand(2 * BATCH_SIZE), sample)
            assert scheduler.step_index == 2

    def test_non_finite_sample(self, config, mixture):
        """NaN or inf in the sample: bad input at the run's first step (`ValueError`), a failure of the run later
        (`SamplingError`)."""
        scheduler = self.make(config)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        model = ExactScoreModel(mixture, scheduler)
        sample = prior_sample(scheduler, FLAT_SHAPE, make_generator(0))
        first = scheduler.timesteps[0]
        bad = sample.clone()
        bad[1, 3] = math.nan
        with pytest.raises(ValueError, match="`sample` holds NaN"):
            scheduler.step(model(sample, first), first, bad)
        sample = scheduler.step(model(sample, first), first, sample).prev_sample.clone()
        sample[2, 0] = math.inf
        second = scheduler.timesteps[1]
        with pytest.raises(SamplingError, match="`sample` holds NaN or infinite values at step 1"):
            scheduler.step(torch.zeros_like(sample), second, sample)

    def test_two_loops_sharing_a_scheduler_are_caught_at_the_first_wrong_step(self, config, mixture):
        """Loop A steps, loop B restarts the scheduler and steps, loop A steps again with its own sample: refused at
        that step, and B goes on. An output fed again one step later is refused the same way."""
        scheduler = self.make(config)
        model = ExactScoreModel(mixture, scheduler)
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        first, second = scheduler.timesteps[0], scheduler.timesteps[1]
        loop_a = prior_sample(scheduler, FLAT_SHAPE, make_generator(0))
        loop_a = scheduler.step(model(loop_a, first), first, loop_a).prev_sample
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        loop_b = prior_sample(scheduler, FLAT_SHAPE, make_generator(1))
        loop_b = scheduler.step(model(loop_b, first), first, loop_b).prev_sample
        with pytest.raises(ValueError, match="two sampling loops"):
            scheduler.step(model(loop_a, second), second, loop_a)
        later = scheduler.step(model(loop_b, second), second, loop_b).prev_sample
        assert bool(torch.isfinite(later).all())
        if len(scheduler.timesteps) > 2:
            third = scheduler.timesteps[2]
            with pytest.raises(ValueError, match="output of step 0 of this run"):
                scheduler.step(model(loop_b, third), third, loop_b)

    def test_unknown_config_key(self, config):
        scheduler_config = {**self.make(config).config, "not_a_scheduler_key": 1}
        with pytest.raises(ValueError, match="not_a_scheduler_key"):
            self.scheduler_class.from_config(scheduler_config)


# ---- the schedulers -------------------------------------------------------------------------------------------


# NCSN's sampler with NCSNv2's CIFAR-10 step, the defaults before consistent annealing was (the first two configs
# below keep the cases `regression_cases.py` recorded with them).
NCSN_SETTINGS = {"consistent": False, "forget_prior": False, "step_size": 1.24e-5, "steps_per_level": 5}


class TestAnnealedLangevinScheduler(ScoreSchedulerCommonTest):
    scheduler_class = AnnealedLangevinScheduler
    configs = [
        NCSN_SETTINGS,
        {**NCSN_SETTINGS, "final_denoising": False, "timestep_type": "discrete", "prediction_type": "epsilon"},
        {
            "consistent": False,
            "forget_prior": False,
            "timestep_type": "continuous",
            "steps_per_level": 2,
            "step_size": 1e-4,
            "num_train_timesteps": 10,
        },
        # η = step_size/(2σ_min²) = 1: denoise, then noise to the next level; consistent at any number of levels.
        {"consistent": True, "step_size": 2e-4, "steps_per_level": 2},
        {},
        {"steps_per_level": 3, "final_denoising": False, "timestep_type": "discrete", "prediction_type": "epsilon"},
        # NCSNv2's technique 4 for the step size.
        {"consistent": False, "steps_per_level": 2, "timestep_type": "continuous"},
        {"forget_prior": False, "timestep_type": "continuous"},
    ]

    def expected_evaluations(self, scheduler, num_inference_steps: int) -> int:
        return num_inference_steps * scheduler.config.steps_per_level + int(scheduler.config.final_denoising)


def test_consistent_annealed_sampling_keeps_the_noise_at_each_level():
    """From x_0 + σ_1·z, each consistent step leaves x_0 + σ'·z (σ' the next step's level) when p_0 is a point mass;
    a near one, N(μ, (10⁻⁴)²I), checks it level by level. Langevin's own noise stays above the level."""
    point_mass = GaussianMixture(torch.zeros(1, 64, dtype=torch.float64), 1e-4)
    for consistent, low, high in ((True, 0.98, 1.02), (False, 1.5, math.inf)):
        scheduler = AnnealedLangevinScheduler(consistent=consistent, step_size=5e-6, sigma_max=10.0, steps_per_level=1)
        scheduler.set_timesteps(400)
        model = ExactScoreModel(point_mass, scheduler)
        generator = make_generator(4)
        sample = prior_sample(scheduler, (500, 64), generator, torch.float64)
        ratios = []
        for index, timestep in enumerate(scheduler.timesteps[:-1]):
            sample = scheduler.step(model(sample, timestep), timestep, sample, generator=generator).prev_sample
            level = scheduler.sde.marginal_std(scheduler.time_for_timestep(scheduler.timesteps[index + 1]))
            ratios.append(float(sample.std() / (level**2 + 1e-8) ** 0.5))
        assert low < min(ratios[100:]) and max(ratios[100:]) < high, (consistent, min(ratios), max(ratios))


def test_default_steps_forget_the_prior_then_are_ancestral_steps(mixture):
    """The first step forgets the prior, x̂₀ + σ_2·z; after it, η = 1 − ρ² makes a consistent step from σ_i to
    σ_{i+1} NCSN's ancestral step, the posterior draw q(x_{σ_{i+1}} | x_{σ_i}, x̂₀): mean x + b²·score, std
    b·σ_{i+1}/σ_i, b² = σ_i² − σ_{i+1}²."""
    scheduler = AnnealedLangevinScheduler()
    scheduler.set_timesteps(7)
    model = ExactScoreModel(mixture, scheduler)
    sample = prior_sample(scheduler, FLAT_SHAPE, make_generator(2), torch.float64)
    sigmas = scheduler.grid.sigmas.tolist()
    # The 6 steps between the 7 levels (the last level's step stays at σ_min, then the model denoises).
    for index, timestep in enumerate(scheduler.timesteps[:6]):
        score = model(sample, timestep)
        noise = torch.randn(sample.shape, generator=make_generator(index), dtype=torch.float64)
        output = scheduler.step(score, timestep, sample, generator=make_generator(index))
        sigma, next_sigma = sigmas[index], sigmas[index + 1]
        if index == 0:
            mean, std = output.pred_original_sample, next_sigma
        else:
            b = (sigma**2 - next_sigma**2) ** 0.5
            mean, std = sampling.ancestral_step(sample, score, 1.0, b, sigma, next_sigma)
        torch.testing.assert_close(output.prev_sample_mean, mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(output.prev_sample, sampling.add_noise(mean, noise, std), rtol=1e-10, atol=1e-10)
        sample = output.prev_sample


def test_forgetting_the_prior_removes_its_missing_mean():
    """On N(μ, s²I) with a mean far from the prior's 0, a chain that keeps the prior still misses p_σ's mean by
    −μ·(s² + σ²)/(s² + σ_max²) at level σ (the annealing's contraction), large where σ is large; the first step
    x̂₀ + σ'·z starts it at p_T's mean."""
    mean, std, dim, num_samples, sigma_max = 5.0, 0.5, 16, 4000, 10.0
    gaussian = GaussianMixture(torch.full((1, dim), mean, dtype=torch.float64), std)
    for forget_prior in (False, True):
        scheduler = AnnealedLangevinScheduler(sigma_max=sigma_max, forget_prior=forget_prior)
        scheduler.set_timesteps(200)
        model = ExactScoreModel(gaussian, scheduler)
        generator = make_generator(3)
        sample = prior_sample(scheduler, (num_samples, dim), generator, torch.float64)
        # Stop where the sample is at the first level below σ = 2.
        stop = int((scheduler.grid.next_sigmas < 2.0).nonzero()[0])
        for timestep in scheduler.timesteps[: stop + 1]:
            sample = scheduler.step(model(sample, timestep), timestep, sample, generator=generator).prev_sample
        sigma = float(scheduler.grid.next_sigmas[stop])
        kept_offset = -mean * (std**2 + sigma**2) / (std**2 + sigma_max**2)
        # The sample mean's standard error is about σ/√(num_samples·dim) ≈ 0.008.
        expected = 0.0 if forget_prior else kept_offset
        assert float(sample.mean()) - mean == pytest.approx(expected, abs=0.025), (forget_prior, kept_offset)


def test_unset_step_size_follows_the_levels():
    """NCSN's sampler gets NCSNv2's technique 4: on NCSNv2's CIFAR-10 levels (232 from 50 to 0.01, T = 5) its ε' is
    the paper's 6.2e-6, i.e. ε = 1.24e-5 here. A consistent one gets 2σ_min²(1 − ρ²); a set `step_size` is kept."""
    ncsn = AnnealedLangevinScheduler(consistent=False, steps_per_level=5)
    assert ncsn.step_size_for_levels(232) == pytest.approx(1.24e-5, rel=0.01)
    # More levels per decade of σ need a smaller step to shrink the smaller excess γ².
    assert ncsn.step_size_for_levels(500) < ncsn.step_size_for_levels(232)
    consistent = AnnealedLangevinScheduler()
    ratio = (consistent.config.sigma_min / consistent.config.sigma_max) ** (1 / 99)
    assert consistent.step_size_for_levels(100) == pytest.approx(2 * 0.01**2 * (1 - ratio**2), rel=1e-12)
    # One level: as if it stepped to σ_min, a consistent step denoises fully (η ≈ 1).
    assert consistent.step_size_for_levels(1) == pytest.approx(2 * 0.01**2, rel=1e-6)
    assert AnnealedLangevinScheduler(step_size=3e-5, consistent=False).step_size_for_levels(10) == 3e-5
    # A derived consistent step is consistent at any number of levels.
    for num_levels in (1, 2, 3, 10, 1000):
        consistent.set_timesteps(num_levels)


def test_consistent_step_size_below_the_level_ratio_names_its_range():
    scheduler = AnnealedLangevinScheduler(consistent=True, step_size=1e-5)
    with pytest.raises(ValueError, match=r"step_size.*num_inference_steps=10|num_inference_steps=10.*step_size"):
        scheduler.set_timesteps(10)
    scheduler.set_timesteps(200)


class TestPredictorCorrectorScheduler(ScoreSchedulerCommonTest):
    scheduler_class = PredictorCorrectorScheduler
    # The configs with a corrector that `regression_cases.py` recorded before "sample_corrected" became the default
    # name corrector_norm="batch", the default they were recorded with.
    configs = [
        {"corrector_norm": "batch"},
        {"predictor": "euler_maruyama", "corrector": "none", "prediction_type": "epsilon", "timestep_type": "sigma"},
        {"predictor": "ancestral", "correct_steps": 2, "timestep_type": "discrete", "corrector_norm": "batch"},
        {"prior_snr": None, "timestep_type": "sigma", "corrector_norm": "batch"},
        {"prior_snr": 0.3, "snr_ramp_start": 0.0, "corrector_norm": "sample"},
        {"corrector_norm": "sample", "timestep_type": "sigma"},
        {"sde_type": "vp", "prediction_type": "epsilon", "corrector_norm": "sample"},
        {"sde_type": "vp", "corrector_norm": "batch", "timestep_type": "discrete"},
        {
            "sde_type": "vp",
            "predictor": "ancestral",
            "corrector": "none",
            "beta_schedule": "linear",
            "prediction_type": "epsilon",
            "timestep_type": "discrete",
        },
        {"sde_type": "vp", "predictor": "euler_maruyama", "timestep_type": "sigma", "corrector_norm": "batch"},
        {"sde_type": "subvp", "predictor": "euler_maruyama", "correct_steps": 0},
        {"sde_type": "subvp", "corrector": "none", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {
            "sde_type": "subvp",
            "predictor": "ancestral",
            "timestep_type": "sigma",
            "beta_schedule": "squaredcos_cap_v2",
            "corrector_norm": "batch",
        },
        {},
        {"sde_type": "vp", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {"sde_type": "subvp", "predictor": "reverse_diffusion", "correct_steps": 2, "timestep_type": "sigma"},
    ]

    def expected_evaluations(self, scheduler, num_inference_steps: int) -> int:
        corrector_steps = scheduler.config.correct_steps if scheduler.config.corrector == "langevin" else 0
        return num_inference_steps * (1 + corrector_steps)

    def per_sample_reproducible(self, scheduler) -> bool:
        corrector_runs = scheduler.config.corrector == "langevin" and scheduler.config.correct_steps > 0
        return not (corrector_runs and scheduler.config.corrector_norm == "batch")


class TestProbabilityFlowScheduler(ScoreSchedulerCommonTest):
    scheduler_class = ProbabilityFlowScheduler
    configs = [
        {},
        {"solver": "euler", "time_spacing": "uniform", "timestep_type": "sigma", "prediction_type": "epsilon"},
        {"time_spacing": "log_sigma", "timestep_type": "discrete"},
        {"sde_type": "vp", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {"sde_type": "vp", "solver": "euler", "time_spacing": "log_sigma", "timestep_type": "sigma"},
        {"sde_type": "subvp", "time_spacing": "uniform", "timestep_type": "sigma"},
        {"sde_type": "subvp", "solver": "euler", "beta_schedule": "scaled_linear", "prediction_type": "epsilon"},
        {"solver": "dpmpp_2m"},
        {"sde_type": "vp", "solver": "dpmpp_2m", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {"solver": "dpmpp_2m", "s_churn": 40.0, "s_tmin": 0.5},
        {"sde_type": "vp", "s_churn": 10.0, "s_tmax": 20.0, "s_noise": 1.003, "timestep_type": "sigma"},
        {"solver": "dpmpp_3m", "timestep_type": "sigma"},
        {"sde_type": "vp", "solver": "dpmpp_3m", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {"sde_type": "subvp", "solver": "dpmpp_3m", "s_churn": 20.0, "s_tmin": 0.5},
        {"solver": "unipc", "timestep_type": "sigma"},
        {"sde_type": "vp", "solver": "unipc", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {"solver": "unipc", "s_churn": 20.0, "s_tmin": 0.5},
    ]

    def expected_evaluations(self, scheduler, num_inference_steps: int) -> int:
        return 2 * num_inference_steps - 1 if scheduler.config.solver == "heun" else num_inference_steps


class TestSDEDPMSolverScheduler(ScoreSchedulerCommonTest):
    scheduler_class = SDEDPMSolverScheduler
    configs = [
        {},
        {"solver_order": 1, "timestep_type": "sigma", "forget_prior": False},
        {"eta": 0.5, "time_spacing": "log_sigma", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {"sde_type": "vp", "prediction_type": "epsilon", "timestep_type": "discrete"},
        {"sde_type": "subvp", "time_spacing": "uniform", "timestep_type": "sigma"},
        {"sde_type": "vp", "beta_schedule": "squaredcos_cap_v2", "solver_order": 1},
    ]

    def expected_evaluations(self, scheduler, num_inference_steps: int) -> int:
        return num_inference_steps


@pytest.mark.parametrize("eta", [1.0, 0.4])
def test_sde_noise_scale_caps_the_share_of_fresh_noise(eta):
    """1 − e^{−2η_i·h} = min(1 − e^{−2ηh}, max_noise_refresh) above `min_ratio`; no noise below it or on the last
    step; a cap of 1 keeps η."""
    for h in (0.01, 0.05, 0.2, 0.5, 1.5):
        ratio, next_ratio = 3.0, 3.0 * math.exp(-h)
        scale = sampling.sde_noise_scale(eta, ratio, next_ratio, 0.2, min_ratio=1.0)
        share = -math.expm1(-2 * scale * h)
        assert share == pytest.approx(min(-math.expm1(-2 * eta * h), 0.2), rel=1e-12), h
        assert sampling.sde_noise_scale(eta, ratio, next_ratio, 1.0) == eta
        assert sampling.sde_noise_scale(eta, ratio, next_ratio, 0.2, min_ratio=3.5) == 0.0
    assert sampling.sde_noise_scale(eta, 3.0, 0.0, 0.2) == 0.0
    assert sampling.sde_noise_scale(eta, 3.0, 1.0, 0.2, min_ratio=3.0) > 0
    for next_ratio in (3.0, 4.0):
        with pytest.raises(ValueError, match="lower the noise level"):
            sampling.sde_noise_scale(eta, 3.0, next_ratio, 0.2)


@pytest.mark.parametrize("sde_type", ["ve", "vp"])
def test_sde_dpm_solver_noise_follows_the_grid(mixture, sde_type):
    """Each step after the prior-forgetting first one is `sde_dpmpp_step` at η_i = `sde_noise_scale`(η, ...), with
    `s_tmin` defaulting to √(σ̄_ε·σ̄_T): deterministic below it, at most a share `max_noise_refresh` of fresh noise
    above it; `max_noise_refresh=1, s_tmin=0` is the constant-η solver."""
    for options, min_ratio in (({}, None), ({"max_noise_refresh": 1.0, "s_tmin": 0.0}, 0.0)):
        scheduler = SDEDPMSolverScheduler(sde_type=sde_type, solver_order=1, **options)
        cap = scheduler.config.max_noise_refresh
        low, high = (float(r) for r in scheduler.convention.noise_to_signal_range())
        if sde_type == "ve":
            assert (low, high) == pytest.approx((0.01, 50.0), rel=1e-3)
        min_ratio = math.sqrt(low * high) if min_ratio is None else min_ratio
        scheduler.set_timesteps(12)
        model = ExactScoreModel(mixture, scheduler)
        sample = prior_sample(scheduler, FLAT_SHAPE, make_generator(2), torch.float64)
        grid = scheduler.grid
        ratios = (grid.sigmas / grid.alphas).tolist()
        next_ratios = [*ratios[1:], 0.0]
        noisy_steps = quiet_steps = 0
        for index, timestep in enumerate(scheduler.timesteps):
            output = scheduler.step(model(sample, timestep), timestep, sample, generator=make_generator(index))
            if index > 0 and next_ratios[index] > 0:
                eta = sampling.sde_noise_scale(1.0, ratios[index], next_ratios[index], cap, min_ratio)
                alpha, next_alpha = float(grid.alphas[index]), float(grid.next_alphas[index])
                mean, std = sampling.sde_dpmpp_step(
                    sample / alpha, output.pred_original_sample, ratios[index], next_ratios[index], eta
                )
                noise = torch.randn(sample.shape, generator=make_generator(index), dtype=torch.float64)
                torch.testing.assert_close(output.prev_sample_mean, mean * next_alpha, rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(
                    output.prev_sample, (mean + std * noise) * next_alpha, rtol=1e-9, atol=1e-9
                )
                # The share of fresh noise, read off the sample itself.
                added = (output.prev_sample - output.prev_sample_mean) / next_alpha
                share = float(added.pow(2).mean() / noise.pow(2).mean()) / next_ratios[index] ** 2
                assert share <= cap + 1e-9 and (share > 0) == (ratios[index] >= min_ratio), (index, share)
                noisy_steps += eta > 0
                quiet_steps += eta == 0
            sample = output.prev_sample
        assert noisy_steps > 0 and (quiet_steps > 0) == (min_ratio > 0), (options, noisy_steps, quiet_steps)


@pytest.mark.parametrize(
    "options, argument",
    [({"max_noise_refresh": 0.0}, "max_noise_refresh"), ({"max_noise_refresh": 1.5}, "max_noise_refresh"),
     ({"s_tmin": -1.0}, "s_tmin")],
)
def test_sde_dpm_solver_refuses_a_bad_noise_range(options, argument):
    with pytest.raises(ValueError, match=argument):
        SDEDPMSolverScheduler(**options)


def test_every_score_scheduler_runs_the_common_tests():
    tested = {test_class.scheduler_class for test_class in ScoreSchedulerCommonTest.__subclasses__()}
    assert tested == set(ScoreSchedulerMixin._score_scheduler_classes)


# ---- option validation ----------------------------------------------------------------------------------------

OPTION_CASES = [
    (scheduler_class, argument, accepted)
    for scheduler_class, options in {
        PredictorCorrectorScheduler: {
            "prediction_type": PREDICTION_TYPES,
            "timestep_type": TIMESTEP_TYPES,
            "sde_type": SDE_TYPES,
            "predictor": PREDICTORS,
            "corrector": CORRECTORS,
            "corrector_norm": CORRECTOR_NORMS,
            "beta_schedule": BETA_SCHEDULES,
        },
        ProbabilityFlowScheduler: {
            "prediction_type": PREDICTION_TYPES,
            "timestep_type": TIMESTEP_TYPES,
            "sde_type": SDE_TYPES,
            "solver": SOLVERS,
            "time_spacing": TIME_SPACINGS,
            "beta_schedule": BETA_SCHEDULES,
        },
        AnnealedLangevinScheduler: {"prediction_type": PREDICTION_TYPES, "timestep_type": TIMESTEP_TYPES},
    }.items()
    for argument, accepted in options.items()
]


@pytest.mark.parametrize(
    "scheduler_class, argument, accepted",
    OPTION_CASES,
    ids=[f"{case[0].__name__}-{case[1]}" for case in OPTION_CASES],
)
@pytest.mark.parametrize("build", ["init", "from_config"])
def test_unknown_option_names_argument_and_choices(
    scheduler_class: type[ScoreSchedulerMixin], argument: str, accepted: tuple[str, ...], build: str
):
    bad = {argument: "v_prediction" if argument == "prediction_type" else "no_such_option"}
    with pytest.raises(ValueError, match=argument) as error:
        if build == "init":
            scheduler_class(**bad)
        else:
            scheduler_class.from_config(scheduler_class().config, **bad)
    assert_error_names_choices(error, argument, accepted)


@pytest.mark.parametrize(
    "scheduler_class, argument, value",
    [
        (PredictorCorrectorScheduler, "num_train_timesteps", 0),
        (PredictorCorrectorScheduler, "snr", -0.1),
        (PredictorCorrectorScheduler, "snr", math.nan),
        (PredictorCorrectorScheduler, "prior_snr", 0.0),
        (PredictorCorrectorScheduler, "prior_snr", math.inf),
        (PredictorCorrectorScheduler, "snr_ramp_start", 1.0),
        (PredictorCorrectorScheduler, "snr_ramp_start", -0.1),
        (PredictorCorrectorScheduler, "correct_steps", -1),
        (PredictorCorrectorScheduler, "sampling_eps", 1.0),
        (ProbabilityFlowScheduler, "sampling_eps", -0.5),
        (ProbabilityFlowScheduler, "s_churn", -1.0),
        (ProbabilityFlowScheduler, "s_churn", math.nan),
        (ProbabilityFlowScheduler, "s_tmin", -0.1),
        (ProbabilityFlowScheduler, "s_tmax", -1.0),
        (ProbabilityFlowScheduler, "s_noise", -0.5),
        (AnnealedLangevinScheduler, "steps_per_level", 0),
        (AnnealedLangevinScheduler, "step_size", 0.0),
        (AnnealedLangevinScheduler, "step_size", math.nan),
        (AnnealedLangevinScheduler, "step_size", math.inf),
    ],
)
def test_bad_numeric_option_names_argument(scheduler_class: type[ScoreSchedulerMixin], argument: str, value: Any):
    with pytest.raises(ValueError, match=argument):
        scheduler_class(**{argument: value})


def test_sibling_only_keyword_in_from_config_raises():
    with pytest.raises(ValueError, match="solver"):
        PredictorCorrectorScheduler.from_config(PredictorCorrectorScheduler().config, solver="heun")


def test_refused_consistent_schedule_leaves_the_previous_one_intact(mixture):
    scheduler = AnnealedLangevinScheduler(consistent=True, step_size=1e-5, steps_per_level=1)
    scheduler.set_timesteps(200)
    expected = sample_with_seed(scheduler, mixture, FLAT_SHAPE, 200, seed=5)
    scheduler.set_timesteps(200)
    with pytest.raises(ValueError, match="step_size"):
        scheduler.set_timesteps(10)
    # Step the 200-level schedule set before the refused call, without setting it again.
    model = ExactScoreModel(mixture, scheduler)
    generator = make_generator(5)
    sample = prior_sample(scheduler, FLAT_SHAPE, generator)
    for timestep in scheduler.timesteps:
        sample = scheduler.step(model(sample, timestep), timestep, sample, generator=generator).prev_sample
    torch.testing.assert_close(sample, expected, rtol=0, atol=0)
