"""Models: the ε-to-score wrapper for DDPM checkpoints, the noise-conditional classifier used for guidance, and the
denoised-input adapter for classifiers of clean images."""

from .classifier import NoiseConditionalClassifier, NoiseConditionalClassifierOutput
from .denoised_input import DenoisedInputClassifier, as_guidance_classifier
from .epsilon_to_score import EpsilonToScore, EpsilonToScoreOutput

__all__ = [
    "DenoisedInputClassifier",
    "EpsilonToScore",
    "EpsilonToScoreOutput",
    "NoiseConditionalClassifier",
    "NoiseConditionalClassifierOutput",
    "as_guidance_classifier",
]
