"""score_diffusers: score-based generative modeling in the Hugging Face Diffusers ecosystem."""

from .schedulers import (
    AnnealedLangevinScheduler,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    ScoreSchedulerOutput,
)
from .sde import SDE, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "AnnealedLangevinScheduler",
    "PredictorCorrectorScheduler",
    "ProbabilityFlowScheduler",
    "ScoreSchedulerOutput",
]
