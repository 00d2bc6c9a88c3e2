"""Oracles for tests and benchmarks: exact-score Gaussian mixtures, sample-quality metrics and the reference loop.

Pure PyTorch (no Diffusers): `ExactScoreModel` answers a sampling loop exactly under any `ModelConvention`.
"""

from .loops import noise, prior_sample, run_loop, run_sampler
from .metrics import component_spreads, log_density_gap, mode_weight_tv, mode_weights, quality_report, sliced_wasserstein
from .mixtures import ExactScoreModel, ExactScoreUNet, GaussianMixture, GaussianMixturePosterior

__all__ = [
    "ExactScoreModel",
    "ExactScoreUNet",
    "GaussianMixture",
    "GaussianMixturePosterior",
    "component_spreads",
    "log_density_gap",
    "mode_weight_tv",
    "mode_weights",
    "noise",
    "prior_sample",
    "quality_report",
    "run_loop",
    "run_sampler",
    "sliced_wasserstein",
]
