"""The update rules of the score samplers as short pure functions over tensors and coefficients (no Diffusers).

Schedulers keep Diffusers' bookkeeping (grid, step index, state) and call these; tests check the rules on their own
(e.g. a multistep solver's local order), and a new sampler starts here. Each returns the new sample's noise-free mean (and the std of the noise still to add) or the new
sample, so the last step of a chain can stop at its mean. Noise is always passed in, drawn by the caller from its
generator.
"""

from .adaptive import AdaptiveSDEOutput, adaptive_reverse_sde
from .langevin import consistent_noise_std, langevin_step, langevin_step_size, per_sample_norm
from .ode import (
    churn_noise_std,
    churned_ratios,
    dpmpp_2m_denoised,
    dpmpp_3m_denoised,
    euler_step,
    heun_step,
    ode_derivative,
    unic_corrected,
)
from .predictors import (
    add_noise,
    ancestral_step,
    euler_maruyama_step,
    reverse_diffusion_step,
    sde_dpmpp_step,
    sde_noise_scale,
)

__all__ = [
    "AdaptiveSDEOutput",
    "adaptive_reverse_sde",
    "add_noise",
    "ancestral_step",
    "churn_noise_std",
    "churned_ratios",
    "consistent_noise_std",
    "dpmpp_2m_denoised",
    "dpmpp_3m_denoised",
    "euler_maruyama_step",
    "euler_step",
    "heun_step",
    "langevin_step",
    "langevin_step_size",
    "ode_derivative",
    "per_sample_norm",
    "reverse_diffusion_step",
    "sde_dpmpp_step",
    "sde_noise_scale",
    "unic_corrected",
]
