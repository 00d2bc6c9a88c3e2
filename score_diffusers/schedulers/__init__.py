"""Score-based schedulers in Diffusers' style, one file per algorithm."""

from .scheduling_annealed_langevin import AnnealedLangevinScheduler
from .scheduling_predictor_corrector import PredictorCorrectorScheduler
from .scheduling_probability_flow import ProbabilityFlowScheduler
from .scheduling_utils import ScoreSchedulerMixin, ScoreSchedulerOutput

__all__ = [
    "AnnealedLangevinScheduler",
    "PredictorCorrectorScheduler",
    "ProbabilityFlowScheduler",
    "ScoreSchedulerMixin",
    "ScoreSchedulerOutput",
]
