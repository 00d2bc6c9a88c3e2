"""Stochastic differential equations of score-based generative modeling.

Pure PyTorch, no Diffusers imports. Every SDE here has a linear drift,

    dx = f(t) x dt + g(t) dw,        t ∈ [0, T], T = 1,

so its perturbation kernel is Gaussian: x_t = α_t x_0 + σ_t z, z ~ N(0, I). Each class is the single
source of truth for α_t (``mean_coeff``), σ_t (``marginal_std``), f and g, the prior at t = T, and the
reverse-time drift that serves the reverse SDE, the probability-flow ODE and the likelihood.

Time arguments are Python floats or tensors of shape ``()`` or ``(batch,)``; sample tensors are
batch-first of any shape ``(batch, *dims)``. Coefficients broadcast against a sample by its own number
of dimensions (``append_dims``), never by a fixed 4-D layout.

Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
ICLR 2021, https://arxiv.org/abs/2011.13456.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

TimeLike = float | torch.Tensor


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample tensor of shape `()` or `(batch,)` so it broadcasts against a tensor with `ndim` dims."""
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _as_time(t: TimeLike, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.tensor(float(t), dtype=dtype, device=device)


class SDE(ABC):
    """A linear-drift SDE ``dx = f(t) x dt + g(t) dw`` with Gaussian marginals ``x_t = α_t x_0 + σ_t z``."""

    T: float = 1.0
    # The config value (`sde_type`) that names this SDE.
    sde_type: ClassVar[str]

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std² I) that the process reaches at t = T."""

    @abstractmethod
    def log_mean_coeff(self, t: TimeLike) -> torch.Tensor:
        """log α_t, the log of the factor that scales x_0 in the marginal mean."""

    @abstractmethod
    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        """σ_t, the standard deviation of x_t given x_0."""

    @abstractmethod
    def drift_coeff(self, t: TimeLike) -> torch.Tensor:
        """f(t), so that the drift is f(x, t) = f(t)·x."""

    @abstractmethod
    def diffusion(self, t: TimeLike) -> torch.Tensor:
        """g(t), the diffusion coefficient."""

    def mean_coeff(self, t: TimeLike) -> torch.Tensor:
        """α_t = exp(log α_t)."""
        return torch.exp(self.log_mean_coeff(t))

    def drift(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """f(x, t) = f(t)·x for `x` of shape `(batch, *dims)`."""
        return append_dims(self.drift_coeff(_as_time(t, x)), x.ndim) * x

    def marginal_prob(self, x0: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean α_t·x_0 (shape of `x0`) and standard deviation σ_t (shape of `t`) of p(x_t | x_0)."""
        t = _as_time(t, x0)
        return append_dims(self.mean_coeff(t), x0.ndim) * x0, self.marginal_std(t)

    def perturb(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor) -> torch.Tensor:
        """x_t = α_t·x_0 + σ_t·noise."""
        t = _as_time(t, x0)
        return append_dims(self.mean_coeff(t), x0.ndim) * x0 + append_dims(self.marginal_std(t), x0.ndim) * noise

    def prior_sampling(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw x_T ~ N(0, prior_std² I) of `shape`."""
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std² I) per sample, shape `(batch,)`."""
        dim = z[0].numel()
        squared_norm = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        log_std = math.log(self.prior_std)
        return -0.5 * dim * math.log(2 * math.pi) - dim * log_std - 0.5 * squared_norm / self.prior_std**2

    def reverse_drift(
        self, x: torch.Tensor, t: TimeLike, score: torch.Tensor, probability_flow: bool = False
    ) -> torch.Tensor:
        """Drift of the reverse-time SDE, f − g²·score, or of the probability-flow ODE, f − ½g²·score."""
        t = _as_time(t, x)
        g2 = append_dims(self.diffusion(t) ** 2, x.ndim)
        weight = 0.5 if probability_flow else 1.0
        return self.drift(x, t) - weight * g2 * score

    def transition_coeffs(
        self, alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_s: torch.Tensor, sigma_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward transition from time s to a later time t: x_t = a·x_s + b·z.

        Given the marginal coefficients (α_s, σ_s) and (α_t, σ_t), the linear SDE gives
        a = α_t/α_s and b² = σ_t² − a²σ_s² (Var(x_t|x_0) = a² Var(x_s|x_0) + Var(x_t|x_s)).
        For VE this is b² = σ_t² − σ_s²; for VP it is DDPM's β = 1 − ᾱ_t/ᾱ_s.
        """
        a = alpha_t / alpha_s
        b2 = (sigma_t**2 - (a * sigma_s) ** 2).clamp_min(0)
        return a, b2.sqrt()

    def noise_to_signal(self, t: TimeLike) -> torch.Tensor:
        """σ_t/α_t, the noise level of x_t/α_t (EDM's σ); equal to σ_t for VE. Increasing in t."""
        return self.marginal_std(t) * torch.exp(-self.log_mean_coeff(t))

    @abstractmethod
    def time_from_noise_to_signal(self, ratio: torch.Tensor) -> torch.Tensor:
        """The time t at which σ_t/α_t = `ratio`, in closed form (float64): the inverse of `noise_to_signal`."""


class VESDE(SDE):
    """Variance-exploding SDE (NCSN / SMLD in continuous time).

    σ(t) = σ_min (σ_max/σ_min)^t,  f = 0,  g(t) = σ(t) √(2 ln(σ_max/σ_min)),  x_t = x_0 + σ(t) z,
    prior N(0, σ_max² I). As in score_sde the marginal std is σ(t), not √(σ(t)² − σ_min²): consistent on
    t ∈ [ε, 1].

    Args:
        sigma_min (`float`): smallest noise scale σ_min > 0, reached at t = 0.
        sigma_max (`float`): largest noise scale σ_max > σ_min, reached at t = 1.
    """

    sde_type = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max < inf; got sigma_min={sigma_min}, sigma_max={sigma_max}."
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def log_mean_coeff(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(_as_time(t))

    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        t = _as_time(t)
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift_coeff(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(_as_time(t))

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return self.marginal_std(t) * math.sqrt(2 * self._log_ratio)

    def time_from_noise_to_signal(self, ratio: torch.Tensor) -> torch.Tensor:
        """t = ln(σ/σ_min) / ln(σ_max/σ_min), the closed-form inverse of σ(t)."""
        return torch.log(torch.as_tensor(ratio, dtype=torch.float64) / self.sigma_min) / self._log_ratio


class _VariancePreservingFamily(SDE):
    """Shared schedule of VP and sub-VP: β(t) and log α_t = −½∫₀ᵗβ(s)ds.

    Either the continuous linear schedule β(t) = β_min + t(β_max − β_min), with
    log α_t = −¼t²(β_max − β_min) − ½tβ_min, or a discrete DDPM table ᾱ_0 … ᾱ_{N−1} placed at
    t_i = i/(N − 1) with log ᾱ interpolated linearly in t (so β(t) is piecewise constant).
    Discretised with N steps the linear schedule is DDPM's linear betas with β_min = N·β_start,
    β_max = N·β_end.
    """

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, alphas_cumprod: torch.Tensor | None = None
    ):
        if alphas_cumprod is None:
            if not 0 <= beta_min <= beta_max:
                raise ValueError(
                    f"{type(self).__name__} needs 0 <= beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}."
                )
            self._log_alphas_cumprod = None
        else:
            table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            if table.numel() < 2 or not bool(((table > 0) & (table <= 1)).all()) or bool((table.diff() > 0).any()):
                raise ValueError("`alphas_cumprod` must hold at least 2 non-increasing values in (0, 1].")
            self._log_alphas_cumprod = table.log()
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    @property
    def prior_std(self) -> float:
        return 1.0

    def _table_position(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        table = self._log_alphas_cumprod.to(t.device)
        last = table.numel() - 1
        position = t.to(torch.float64).clamp(0, 1) * last
        index = position.floor().clamp(max=last - 1).long()
        return table, index, position - index

    def log_mean_coeff(self, t: TimeLike) -> torch.Tensor:
        t = _as_time(t)
        if self._log_alphas_cumprod is None:
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        table, index, fraction = self._table_position(t)
        log_alpha_bar = table[index] + fraction * (table[index + 1] - table[index])
        return (0.5 * log_alpha_bar).to(t.dtype)

    def beta(self, t: TimeLike) -> torch.Tensor:
        """β(t) = −2 d/dt log α_t."""
        t = _as_time(t)
        if self._log_alphas_cumprod is None:
            return self.beta_min + t * (self.beta_max - self.beta_min)
        table, index, _ = self._table_position(t)
        return (-(table.numel() - 1) * (table[index + 1] - table[index])).to(t.dtype)

    def drift_coeff(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * self.beta(t)

    @abstractmethod
    def _negative_log_mean_coeff_from_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """−log α at which σ/α = `ratio`: the inverse of the family member's σ(α)."""

    def time_from_noise_to_signal(self, ratio: torch.Tensor) -> torch.Tensor:
        """t from −log α_t = L(ratio), solving ¼t²(β_max − β_min) + ½tβ_min = L on the linear schedule (the root
        2L/(b + √(b² + 4aL)), stable near t = 0), or by a table search where log ᾱ is linear between grid points."""
        neg_log_alpha = self._negative_log_mean_coeff_from_ratio(torch.as_tensor(ratio, dtype=torch.float64))
        if self._log_alphas_cumprod is None:
            a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
            t = 2 * neg_log_alpha / (b + torch.sqrt(b**2 + 4 * a * neg_log_alpha))
            return t.clamp(0, self.T)
        # −log ᾱ is non-decreasing along the table; find the segment holding 2L and interpolate inside it.
        table = -self._log_alphas_cumprod.to(neg_log_alpha.device)
        target = (2 * neg_log_alpha).clamp(float(table[0]), float(table[-1]))
        last = table.numel() - 1
        index = (torch.searchsorted(table, target, right=True) - 1).clamp(0, last - 1)
        low, high = table[index], table[index + 1]
        width = high - low
        fraction = torch.where(width > 0, (target - low) / torch.where(width > 0, width, 1), torch.zeros_like(low))
        return (index + fraction.clamp(0, 1)) / last


class VPSDE(_VariancePreservingFamily):
    """Variance-preserving SDE (DDPM in continuous time).

    f(x, t) = −½β(t)x, g(t) = √β(t), σ_t = √(1 − α_t²) (computed with `expm1` so it stays accurate near
    t = 0), prior N(0, I).

    Args:
        beta_min (`float`): β(0) of the continuous linear schedule (0.1 ↔ DDPM's β_start = 1e-4, N = 1000).
        beta_max (`float`): β(1) of the continuous linear schedule (20 ↔ DDPM's β_end = 0.02, N = 1000).
        alphas_cumprod (`torch.Tensor`, *optional*): a DDPM ᾱ table of shape `(N,)`; when given it replaces the
            linear schedule (any Diffusers `beta_schedule`).
    """

    sde_type = "vp"

    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_mean_coeff(t)))

    def _negative_log_mean_coeff_from_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        # σ² = 1 − α², so ratio² = α⁻² − 1 and −log α = ½ log(1 + ratio²).
        return 0.5 * torch.log1p(ratio**2)

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(self.beta(t))


class SubVPSDE(_VariancePreservingFamily):
    """Sub-VP SDE: the VP drift with a smaller diffusion, whose variance stays below VP's.

    f(x, t) = −½β(t)x, g(t)² = β(t)(1 − e^{−2∫₀ᵗβ}) = β(t)(1 − α_t⁴), σ_t = 1 − α_t², prior N(0, I).

    Args: as for `VPSDE`.
    """

    sde_type = "subvp"

    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        return -torch.expm1(2 * self.log_mean_coeff(t))

    def _negative_log_mean_coeff_from_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        # σ = 1 − α², so ratio = α⁻¹ − α = 2 sinh(−log α).
        return torch.asinh(ratio / 2)

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_mean_coeff(t)))
