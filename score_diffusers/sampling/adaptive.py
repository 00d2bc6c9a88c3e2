"""An adaptive-step solver of the reverse-time SDE (Jolicoeur-Martineau et al., 2021, "Gotta Go Fast When Generating
Data with Score-Based Models", https://arxiv.org/abs/2105.14080).

It is a sampler function rather than a Diffusers scheduler: each sample accepts or rejects its own steps, so neither
the number of model evaluations nor the times they happen at are known before sampling, and they differ between the
samples of a batch, while a Diffusers loop iterates over one fixed `timesteps` list for the whole batch. The function
takes the score as a callable of (x, t) with t per sample, so any model and convention plug in
(`ModelConvention.timestep` and `score_from_output` make that callable from a unet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checks import SamplingError, check_number
from ..conventions import ModelConvention
from ..sde import SDE, append_dims

# score_fn(x, t, rows): the score at the samples `rows` (indices into the batch) of shape (b, *dims), times t (b,).
ScoreFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AdaptiveSDEOutput:
    """Result of `adaptive_reverse_sde`.

    Args:
        sample (`torch.Tensor` of shape `(batch, *dims)`): the samples (denoised at ε unless asked otherwise).
        nfe (`torch.Tensor` of shape `(batch,)`, int64): model evaluations spent on each sample.
        accepted (`torch.Tensor` of shape `(batch,)`, int64): accepted steps per sample.
        rejected (`torch.Tensor` of shape `(batch,)`, int64): rejected steps per sample.
    """

    sample: torch.Tensor
    nfe: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor


def _standard_normal(
    shape: tuple[int, ...], rows: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """Noise for the samples `rows` of the batch: from each one's own generator when given a list (so a sample does
    not depend on the rest of its batch), else from the one generator."""
    if isinstance(generator, list):
        draws = [torch.randn((1, *shape), generator=generator[int(i)], device=like.device, dtype=like.dtype)
                 for i in rows]
        return torch.cat(draws)
    return torch.randn((len(rows), *shape), generator=generator, device=like.device, dtype=like.dtype)


# The tolerance that matched predictor-corrector at 200 evaluations with fewer on VE (README, `bench_adaptive.py`).
DEFAULT_RTOL = 0.2


def adaptive_reverse_sde(
    score_fn: ScoreFunction,
    sample: torch.Tensor,
    sde: SDE,
    eps: float,
    rtol: float = DEFAULT_RTOL,
    atol: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    initial_step: float = 0.01,
    safety: float = 0.9,
    exponent: float = 0.9,
    forget_prior: bool = True,
    denoise: bool = True,
    max_evaluations: int = 10_000,
) -> AdaptiveSDEOutput:
    """Integrate the reverse SDE dx = [f(x, t) − g(t)²·s(x, t)]dt + g(t)dw̄ from t = T to `eps`, per sample.

    Each attempted step of size h from t draws one Brownian increment W(h) and forms the Euler–Maruyama proposal
    x' = x − h·F(x, t) + g(t)·W(h) and the improved-Euler one x'' = ½(x' + x − h·F(x', t − h) + g(t − h)·W(h)),
    F = f − g²s (two model evaluations). The local error E = ‖x' − x''‖₂/(√D·rtol·σ_t) decides, per sample: E ≤ 1
    accepts x'' and moves to t − h; either way the next step is h ← min(t − ε, safety·h·E^(−exponent)). A rejected
    increment is kept and a shorter retry takes its share from a Brownian bridge (the idea of Rackauckas & Nie's
    RSwM), so rejections do not select the noise: redrawing it biased the mode weights. With `forget_prior` one
    evaluation first replaces x_T by α_T·x̂₀(x_T) + σ_T·z, which starts the chain from p_T's mean (see
    `SDEDPMSolverScheduler`). At ε, `denoise` spends one more evaluation on Tweedie's x̂₀ = (x + σ_ε²·s)/α_ε.

    Jolicoeur-Martineau et al. measure the error against δ = max(ε_abs, ε_rel·max(|x'|, |x'_prev|)), in the data's
    units (their ε_abs = 0.0078 is 1/128 of the [0, 1] pixel range). Here it is measured against the noise the sample
    still carries, σ_t: that needs no data scale, and one `rtol` means the same for VE and VP (with the data-unit
    rule a VE model's samples end too narrow unless ε_abs is set at the data's finest scale, at several times the
    evaluations; `benchmarks/bench_adaptive.py` prints both).

    Args:
        score_fn (`Callable`): `score_fn(x, t, rows)` → ∇ₓ log p_t(x) for `x` of shape `(b, *dims)`, `t` of shape
            `(b,)` (float64) and `rows` (int64, `(b,)`) the indices of these samples in the batch (for per-sample
            conditioning such as class labels); shape of `x`.
        sample (`torch.Tensor` of shape `(batch, *dims)`): x_T, drawn from the SDE's prior.
        sde (`SDE`): the forward SDE the model was trained on.
        eps (`float`): the last time ε (a scheduler's `sampling_eps`).
        rtol (`float`, defaults to 0.2): the local error allowed, as a fraction of σ_t.
        atol (`float`, *optional*): given, the error is measured as Jolicoeur-Martineau et al. do, against
            max(atol, rtol·max(|x'|, |x'_prev|)) in the data's units.
        generator (`torch.Generator` or list of them, *optional*): source of the noise; a list gives each sample its
            own.
        initial_step (`float`, defaults to 0.01), safety (`float`, defaults to 0.9), exponent (`float`, defaults to
            0.9): the first step size and the step-size controller's θ and r.
        forget_prior (`bool`, defaults to `True`): re-centre x_T on x̂₀(x_T) first (one evaluation).
        denoise (`bool`, defaults to `True`): end with the Tweedie step at ε.
        max_evaluations (`int`, defaults to 10,000): per sample; a sample that needs more raises `SamplingError`.

    Returns:
        `AdaptiveSDEOutput` with the samples and each sample's evaluations and accepted and rejected steps.
    """
    check_number("rtol", rtol, 0, low_open=True, high_open=True)
    check_number("atol", atol, 0, low_open=True, high_open=True, allow_none=True, none_means="for rtol·σ_t")
    check_number("eps", eps, 0, sde.T, high_open=True)
    batch, dims = sample.shape[0], tuple(sample.shape[1:])
    x = sample.clone()
    t = torch.full((batch,), float(sde.T), dtype=torch.float64)
    h = torch.full((batch,), float(initial_step), dtype=torch.float64).clamp(max=sde.T - eps)
    previous_proposal = x.clone()
    nfe = torch.zeros(batch, dtype=torch.int64)
    accepted = torch.zeros_like(nfe)
    rejected = torch.zeros_like(nfe)

    everyone = torch.arange(batch)

    def drift(values: torch.Tensor, times: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        score = score_fn(values, times, rows)
        return sde.reverse_drift(values, times.to(values.device), score).to(values.dtype)

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        return append_dims(values.to(device=x.device, dtype=x.dtype), x.ndim)

    if forget_prior:
        t_start = torch.full((batch,), float(sde.T), dtype=torch.float64)
        alpha_T, sigma_T = float(sde.mean_coeff(sde.T)), float(sde.marginal_std(sde.T))
        denoised = ModelConvention.denoised(x, score_fn(x, t_start, everyone), alpha_T, sigma_T)
        x = sde.perturb(denoised, sde.T, _standard_normal(dims, everyone, generator, x))
        nfe += 1
    # The Brownian path is kept across rejections (the idea of Rackauckas & Nie's RSwM): a rejected increment stays
    # pending, and a shorter retry takes its share from a Brownian bridge, so rejections do not select the noise.
    pending = torch.zeros_like(x)
    pending_h = torch.zeros(batch, dtype=torch.float64)
    while True:
        active = torch.nonzero(t > eps * (1 + 1e-12)).flatten()
        if active.numel() == 0:
            break
        if int(nfe[active].max()) + 2 > max_evaluations:
            raise SamplingError(
                f"the adaptive SDE solver did not reach t = {eps:g} within {max_evaluations} evaluations per sample "
                f"({active.numel()} samples still at t ≥ {float(t[active].min()):.4g}); raise rtol or max_evaluations."
            )
        rows = active.to(x.device)
        xa, ta, ha, pa = x[rows], t[active], h[active], pending_h[active]
        fresh = _standard_normal(dims, active, generator, x)
        inside = ha <= pa
        # W(h) from the pending W(p): the bridge (h/p)·W(p) + √(h(p − h)/p)·ξ inside it, W(p) + √(h − p)·ξ past it.
        share = torch.where(inside, ha / pa.clamp(min=1e-300), torch.ones_like(ha))
        spread = torch.where(inside, ha * (pa - ha) / pa.clamp(min=1e-300), ha - pa).clamp(min=0).sqrt()
        increment = per_sample(share) * pending[rows] + per_sample(spread) * fresh
        step = per_sample(ha)
        g_now, g_next = per_sample(sde.diffusion(ta)), per_sample(sde.diffusion(ta - ha))
        # Euler–Maruyama proposal, then the improved-Euler one with the same Brownian increment.
        proposal = xa - step * drift(xa, ta, active) + g_now * increment
        corrected = 0.5 * (proposal + xa - step * drift(proposal, ta - ha, active) + g_next * increment)
        nfe[active] += 2
        if atol is None:
            delta = per_sample(sde.marginal_std(ta)) * rtol
        else:  # Jolicoeur-Martineau et al.'s rule, in the data's units
            delta = torch.clamp(torch.maximum(proposal.abs(), previous_proposal[rows].abs()) * rtol, min=atol)
        error = ((proposal - corrected) / delta).reshape(len(active), -1).pow(2).mean(1).sqrt()
        error = error.to("cpu", torch.float64)
        if not bool(torch.isfinite(error).all()):
            raise SamplingError(f"the score turned NaN or infinite at t ≈ {float(ta.min()):.4g}; sampling stopped.")
        accept = error <= 1
        on_device = accept.to(x.device)
        # Accepted: what is left of the pending increment beyond h stays pending. Rejected: W(h) becomes it.
        remainder = torch.where(append_dims(inside.to(x.device), x.ndim), pending[rows] - increment,
                                torch.zeros_like(increment))
        pending[rows] = torch.where(append_dims(on_device, x.ndim), remainder, increment)
        pending_h[active] = torch.where(accept, (pa - ha).clamp(min=0), ha)
        accepted_rows = active[accept]
        x[accepted_rows.to(x.device)] = corrected[on_device]
        previous_proposal[accepted_rows.to(x.device)] = proposal[on_device]
        t[accepted_rows] = ta[accept] - ha[accept]
        accepted[accepted_rows] += 1
        rejected[active[~accept]] += 1
        new_h = safety * ha * error.clamp(min=1e-12).pow(-exponent)
        h[active] = torch.minimum(new_h, (t[active] - eps).clamp(min=0))
        # Land exactly on ε: the last accepted step's remainder may be below float resolution.
        t[active[(t[active] - eps) <= 1e-12 * max(eps, 1e-12)]] = eps
    if denoise:
        t_end = torch.full((batch,), float(eps), dtype=torch.float64)
        score = score_fn(x, t_end, everyone)
        nfe += 1
        x = ModelConvention.denoised(x, score, float(sde.mean_coeff(eps)), float(sde.marginal_std(eps)))
    return AdaptiveSDEOutput(sample=x, nfe=nfe, accepted=accepted, rejected=rejected)
