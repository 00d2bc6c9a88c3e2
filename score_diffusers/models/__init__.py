"""Models: the ε-to-score wrapper for DDPM checkpoints and the noise-conditional classifier used for guidance."""

from .classifier import NoiseConditionalClassifier, NoiseConditionalClassifierOutput
from .epsilon_to_score import EpsilonToScore, EpsilonToScoreOutput

__all__ = ["EpsilonToScore", "EpsilonToScoreOutput", "NoiseConditionalClassifier", "NoiseConditionalClassifierOutput"]
