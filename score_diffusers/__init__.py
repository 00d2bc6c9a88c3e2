"""score_diffusers: score-based generative modeling in the Hugging Face Diffusers ecosystem."""

from .schedulers import (
    AnnealedLangevinScheduler,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    ScoreSchedulerOutput,
)
from .sde import SDE, SubVPSDE, VESDE, VPSDE
from .likelihood import LikelihoodOutput, decode, encode, log_likelihood
from .models import EpsilonToScore, NoiseConditionalClassifier
from .pipelines import ScoreGuidedPipeline

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
    "log_likelihood",
    "LikelihoodOutput",
    "encode",
    "decode",
    "ScoreGuidedPipeline",
    "EpsilonToScore",
    "NoiseConditionalClassifier",
]
