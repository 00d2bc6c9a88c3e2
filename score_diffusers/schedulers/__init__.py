"""Score-based schedulers in Diffusers' style, one file per algorithm, and the registry of their names."""

from .registry import DEFAULT_SCHEDULERS, SCHEDULERS, SchedulerRecipe, build_scheduler, default_scheduler_name
from .scheduling_annealed_langevin import AnnealedLangevinScheduler
from .scheduling_predictor_corrector import PredictorCorrectorScheduler
from .scheduling_probability_flow import ProbabilityFlowScheduler
from .scheduling_sde_dpm_solver import SDEDPMSolverScheduler
from .scheduling_utils import ScheduleGrid, ScoreSchedulerMixin, ScoreSchedulerOutput

__all__ = [
    "DEFAULT_SCHEDULERS",
    "SCHEDULERS",
    "AnnealedLangevinScheduler",
    "PredictorCorrectorScheduler",
    "ProbabilityFlowScheduler",
    "SDEDPMSolverScheduler",
    "ScheduleGrid",
    "SchedulerRecipe",
    "ScoreSchedulerMixin",
    "ScoreSchedulerOutput",
    "build_scheduler",
    "default_scheduler_name",
]
