"""The one table of score scheduler names, and the default sampler of each SDE.

The CLI's `--scheduler`, the pipeline's swap of a Diffusers scheduler, the training scripts' saved sampler and every
error text that lists samplers read it. A name stands for `scheduler_class.from_config(config, **overrides)`: the
model's conventions (SDE, noise range, ᾱ table, prediction and timestep types) come from `config`, the name fixes the
algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..conventions import ModelConvention
from .scheduling_annealed_langevin import AnnealedLangevinScheduler
from .scheduling_predictor_corrector import PredictorCorrectorScheduler
from .scheduling_probability_flow import ProbabilityFlowScheduler
from .scheduling_sde_dpm_solver import SDEDPMSolverScheduler
from .scheduling_utils import ScoreSchedulerMixin


@dataclass(frozen=True)
class SchedulerRecipe:
    """How a scheduler name builds a score scheduler from a model's scheduler config.

    Args:
        scheduler_class (`type`): the score scheduler to build.
        overrides (`dict`): config values that define the name (predictor, solver, ...).
        summary (`str`): one line for `--help`.
        num_inference_steps (`int`, defaults to 50): the `num_inference_steps` it is run with when the caller
            names none (training scripts' sample grids).
    """

    scheduler_class: type[ScoreSchedulerMixin]
    overrides: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    num_inference_steps: int = 50

    def build(self, config: Mapping[str, Any]) -> ScoreSchedulerMixin:
        """`scheduler_class.from_config(config, **overrides)`."""
        return self.scheduler_class.from_config(dict(config), **self.overrides)


_PROBABILITY_FLOW_HEUN = SchedulerRecipe(
    ProbabilityFlowScheduler,
    {"solver": "heun"},
    "probability-flow ODE, Heun steps: deterministic, 2n - 1 evaluations for n steps",
    30,
)

SCHEDULERS: dict[str, SchedulerRecipe] = {
    "pc": SchedulerRecipe(
        PredictorCorrectorScheduler,
        {},
        "predictor-corrector with the config's settings, else its defaults (ancestral predictor + Langevin "
        "corrector); 1 + correct_steps evaluations a step",
        100,
    ),
    "pc-ancestral": SchedulerRecipe(
        PredictorCorrectorScheduler,
        {"predictor": "ancestral", "corrector": "langevin"},
        "predictor-corrector: ancestral predictor + Langevin corrector",
    ),
    "pc-reverse-diffusion": SchedulerRecipe(
        PredictorCorrectorScheduler,
        {"predictor": "reverse_diffusion", "corrector": "langevin"},
        "predictor-corrector: reverse-diffusion predictor + Langevin corrector (score_sde's sampler)",
    ),
    "ancestral": SchedulerRecipe(
        PredictorCorrectorScheduler,
        {"predictor": "ancestral", "corrector": "none"},
        "ancestral sampling, no corrector (DDPM for VP, NCSN ancestral for VE): 1 evaluation a step",
    ),
    "pf": SchedulerRecipe(
        ProbabilityFlowScheduler,
        {},
        "probability-flow ODE with the config's settings, else its defaults (Heun steps, Karras spacing)",
        30,
    ),
    "pf-heun": _PROBABILITY_FLOW_HEUN,
    "probability-flow": _PROBABILITY_FLOW_HEUN,
    "pf-euler": SchedulerRecipe(
        ProbabilityFlowScheduler,
        {"solver": "euler"},
        "probability-flow ODE, Euler steps (DDIM with eta = 0): 1 evaluation a step",
    ),
    "pf-dpmpp-2m": SchedulerRecipe(
        ProbabilityFlowScheduler,
        {"solver": "dpmpp_2m"},
        "probability-flow ODE, DPM-Solver++(2M) multistep: second order, 1 evaluation a step",
    ),
    "pf-dpmpp-3m": SchedulerRecipe(
        ProbabilityFlowScheduler,
        {"solver": "dpmpp_3m"},
        "probability-flow ODE, DPM-Solver++(3M) multistep: third order, 1 evaluation a step (2M at very few steps)",
    ),
    "pf-unipc": SchedulerRecipe(
        ProbabilityFlowScheduler,
        {"solver": "unipc"},
        "probability-flow ODE, UniPC (DPM-Solver++(2M) predictor + UniC corrector, bh2): third order, 1 evaluation a "
        "step",
    ),
    "sde-dpmpp-2m": SchedulerRecipe(
        SDEDPMSolverScheduler,
        {"solver_order": 2},
        "reverse SDE, SDE-DPM-Solver++(2M): stochastic (a step's fresh noise capped, none at low noise), 1 "
        "evaluation a step",
    ),
    "pf-dpmpp-2m-forget-prior": SchedulerRecipe(
        SDEDPMSolverScheduler,
        {"solver_order": 2, "eta": 0.0, "forget_prior": True},
        "probability-flow ODE, DPM-Solver++(2M), after a prior-forgetting first step (SDE-DPM-Solver++(2M) at "
        "eta = 0): the VE sampler for about 10 evaluations, 1 evaluation a step",
        10,
    ),
    "annealed-langevin": SchedulerRecipe(
        AnnealedLangevinScheduler,
        {},
        "annealed Langevin dynamics (NCSN), VE score models only: steps_per_level evaluations a noise level",
    ),
}

# The sampler a model gets when it arrives with a Diffusers scheduler, and the one training saves: VP's
# probability-flow ODE samples well in few evaluations; VE's samples noticeably worse than its SDE, and
# SDE-DPM-Solver++(2M) with its noise defaults is on the noise floor of the exact-score mixtures at 50 evaluations and,
# on the centred and the uncentred bar mixture, level with or ahead of Diffusers' ScoreSdeVeScheduler at 200 with 20
# (README, `bench_stochastic.py`).
DEFAULT_SCHEDULERS: dict[str, str] = {"ve": "sde-dpmpp-2m", "vp": "pf", "subvp": "pf"}


def scheduler_names() -> str:
    """The accepted names, for error texts."""
    return ", ".join(SCHEDULERS)


def scheduler_class_names() -> str:
    """The score scheduler classes the names build, for error texts."""
    return ", ".join(sorted({recipe.scheduler_class.__name__ for recipe in SCHEDULERS.values()}))


def build_scheduler(name: str, config: Mapping[str, Any]) -> ScoreSchedulerMixin:
    """The scheduler `name` for a model with scheduler config `config`; a `ValueError` names the choices."""
    if name not in SCHEDULERS:
        raise ValueError(f"`scheduler` must be one of {scheduler_names()}; got {name!r}.")
    return SCHEDULERS[name].build(config)


def default_scheduler_name(config: Mapping[str, Any]) -> str:
    """The default sampler's name for the SDE that `config` (any score or Diffusers scheduler config) describes."""
    return DEFAULT_SCHEDULERS[ModelConvention.from_config(config).sde_type]
