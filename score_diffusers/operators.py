"""Linear measurement operators y = A x for inpainting, colorization and inverse problems (pure PyTorch).

An operator acts per sample: `forward` maps samples of shape `(batch, *sample_dims)` to measurements of shape
`(batch, *measurement_dims)`, `transpose` applies Aᵀ back. The samplers of `score_diffusers.sampling.inverse` need
one more thing, the solve with the Gram matrix AAᵀ:

    gram_solve(v, scale, shift) = (scale·AAᵀ + shift·I)⁺ v,

restricted to the range of A (the pseudo-inverse where the matrix is singular), with `scale` and `shift` floats or
one value per sample. The built-in operators solve it in closed form (their AAᵀ is diagonal, or block-diagonal per
pixel); an operator of your own needs only `forward` and `transpose` and gets a batched conjugate-gradient solve.

Built in: `MaskOperator` (inpainting: the kept pixels), `ChannelMixOperator` (a per-pixel k × C channel matrix;
`grayscale_operator` is colorization's gray channel), `AveragePoolOperator` (downsampling by an integer factor) and
`MatrixOperator` (any (m, D) matrix on the flattened sample).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import SamplingError, check_positive_int
from .sde import append_dims

# Conjugate gradients for operators without a closed-form Gram solve: relative residual and iteration cap.
CG_RTOL = 1e-6
CG_MAX_ITERATIONS = 200


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """A float as is; a per-sample tensor of shape `(batch,)` broadcast against `like`."""
    if torch.is_tensor(value) and value.ndim > 0:
        return append_dims(value.to(device=like.device, dtype=like.dtype), like.ndim)
    return float(value)


class LinearOperator:
    """A linear map A from samples to measurements, applied per sample.

    Subclasses implement `forward` (A x) and `transpose` (Aᵀ y). `gram_solve` defaults to conjugate gradients on
    scale·AAᵀ + shift·I, which needs A to have full row rank when `shift` is 0; `range_projection` (the projection
    onto the range of A, where measurements and their noise live) defaults to the identity, right for a full-row-
    rank A. `rank` is the dimension of that range per sample.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def range_projection(self, y: torch.Tensor) -> torch.Tensor:
        """Project measurements onto the range of A (identity for a full-row-rank A)."""
        return y

    def rank(self, y: torch.Tensor) -> torch.Tensor:
        """Dimension of the range of A for each measurement in `y`, float64 of shape `(batch,)`."""
        return torch.full((y.shape[0],), float(y[0].numel()), dtype=torch.float64)

    def repeat_interleave(self, repeats: int) -> LinearOperator:
        """This operator for a batch in which every sample is repeated `repeats` times in a row (particles); an
        operator that is the same for every sample returns itself."""
        return self

    def gram_solve(self, v: torch.Tensor, scale: float | torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
        """(scale·AAᵀ + shift·I)⁻¹ v by batched conjugate gradients (per sample), to a relative residual of
        `CG_RTOL`; a solve that does not get there in `CG_MAX_ITERATIONS` raises `SamplingError`."""
        scale, shift = _per_sample(scale, v), _per_sample(shift, v)

        def apply(u: torch.Tensor) -> torch.Tensor:
            return scale * self.forward(self.transpose(u)) + shift * u

        dims = tuple(range(1, v.ndim))
        solution = torch.zeros_like(v)
        residual = v.clone()
        direction = residual.clone()
        residual_norm = residual.square().sum(dims, keepdim=True)
        target = (CG_RTOL**2) * residual_norm.clamp_min(torch.finfo(v.dtype).tiny)
        for _ in range(CG_MAX_ITERATIONS):
            if bool((residual_norm <= target).all()):
                return solution
            applied = apply(direction)
            curvature = (direction * applied).sum(dims, keepdim=True)
            step = torch.where(residual_norm > target, residual_norm / curvature, torch.zeros_like(curvature))
            solution = solution + step * direction
            residual = residual - step * applied
            new_norm = residual.square().sum(dims, keepdim=True)
            direction = residual + (new_norm / residual_norm.clamp_min(torch.finfo(v.dtype).tiny)) * direction
            residual_norm = new_norm
        if bool((residual_norm <= target).all()):
            return solution
        raise SamplingError(
            f"{type(self).__name__}.gram_solve: conjugate gradients did not reach a relative residual of {CG_RTOL:g} "
            f"in {CG_MAX_ITERATIONS} iterations (is AAᵀ singular with shift 0?); give the operator a closed-form "
            "`gram_solve`."
        )

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺y = Aᵀ(AAᵀ)⁺y, the least-norm sample with A x = y."""
        return self.transpose(self.gram_solve(y, 1.0, 0.0))

    def check_sample(self, sample_shape: tuple[int, ...], argument: str = "image") -> None:
        """Raise a `ValueError` naming `argument` if samples of shape `(batch, *sample_dims)` do not fit A."""
        try:
            self.forward(torch.zeros(sample_shape))
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"`operator` {type(self).__name__} does not apply to `{argument}` of shape {tuple(sample_shape)}: "
                f"{error}"
            ) from error


class MaskOperator(LinearOperator):
    """Inpainting's observation: the kept pixels, A x = m ⊙ x with a binary `keep` mask (1 = observed).

    Measurements keep the sample's shape, zero where nothing is observed, so AAᵀ = diag(m) and the solve is
    v ⊙ m/(scale·m + shift) on the observed entries (0 elsewhere).

    Args:
        keep (`torch.Tensor` of shape `(batch or 1, *sample_dims)`): 1 where the pixel is observed, 0 where it is to
            be generated; a dimension of size 1 broadcasts (e.g. one mask for all channels, or for the whole batch).
    """

    def __init__(self, keep: torch.Tensor):
        keep = torch.as_tensor(keep)
        if keep.ndim < 2:
            raise ValueError(f"`keep` must have shape (batch or 1, *sample_dims); got {tuple(keep.shape)}.")
        if not bool(((keep == 0) | (keep == 1)).all()):
            raise ValueError("`keep` must be binary (0 = generate, 1 = observed).")
        self.keep = keep.to(torch.float32)

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        return self.keep.to(device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._mask(x)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._mask(y)

    range_projection = forward

    def rank(self, y: torch.Tensor) -> torch.Tensor:
        counts = torch.ones_like(y) * self._mask(y)
        return counts.flatten(1).sum(1).to(torch.float64).cpu()

    def repeat_interleave(self, repeats: int) -> LinearOperator:
        if self.keep.shape[0] == 1:
            return self
        return MaskOperator(self.keep.repeat_interleave(repeats, dim=0))

    def gram_solve(self, v: torch.Tensor, scale: float | torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
        mask = self._mask(v)
        denominator = _per_sample(scale, v) * mask + _per_sample(shift, v)
        return torch.where(mask > 0, v / torch.where(mask > 0, denominator, torch.ones_like(denominator)), 0.0)

    def check_sample(self, sample_shape: tuple[int, ...], argument: str = "image") -> None:
        keep = self.keep
        if keep.ndim != len(sample_shape) or any(k not in (1, s) for k, s in zip(keep.shape, sample_shape)):
            raise ValueError(
                f"The mask of shape {tuple(keep.shape)} does not fit `{argument}` of shape {tuple(sample_shape)}: it "
                "must have shape (batch or 1, *sample_dims), each dimension equal to the sample's or 1."
            )


class ChannelMixOperator(LinearOperator):
    """A per-pixel channel matrix M of shape `(k, C)`: y[:, j] = Σ_c M[j, c]·x[:, c] on `(batch, C, *spatial)`
    samples, so AAᵀ is MMᵀ at every pixel (solved through its eigendecomposition; a zero eigenvalue is outside the
    range and gets the pseudo-inverse).

    Args:
        matrix (`torch.Tensor` of shape `(k, C)`): the channel mixing.
    """

    def __init__(self, matrix: torch.Tensor):
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        if matrix.ndim != 2:
            raise ValueError(f"`matrix` must have shape (k, channels); got {tuple(matrix.shape)}.")
        self.matrix = matrix
        eigenvalues, self._eigenvectors = torch.linalg.eigh(matrix @ matrix.T)
        self._in_range = eigenvalues > eigenvalues.max() * 1e-10
        self._eigenvalues = eigenvalues.clamp_min(0)

    def _mix(self, values: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        return torch.einsum("jc,bc...->bj...", matrix.to(device=values.device, dtype=values.dtype), values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.matrix.shape[1]:
            raise ValueError(f"samples must have {self.matrix.shape[1]} channels in dimension 1; got {tuple(x.shape)}.")
        return self._mix(x, self.matrix)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return self._mix(y, self.matrix.T)

    def range_projection(self, y: torch.Tensor) -> torch.Tensor:
        vectors = self._eigenvectors * self._in_range
        return self._mix(self._mix(y, vectors.T), vectors)

    def rank(self, y: torch.Tensor) -> torch.Tensor:
        pixels = y[0, 0].numel()
        return torch.full((y.shape[0],), float(int(self._in_range.sum()) * pixels), dtype=torch.float64)

    def gram_solve(self, v: torch.Tensor, scale: float | torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
        coordinates = self._mix(v, self._eigenvectors.T)
        eigenvalues = self._eigenvalues.to(device=v.device, dtype=v.dtype).reshape(1, -1, *([1] * (v.ndim - 2)))
        in_range = self._in_range.to(v.device).reshape(eigenvalues.shape)
        denominator = _per_sample(scale, v) * eigenvalues + _per_sample(shift, v)
        coordinates = torch.where(in_range, coordinates / torch.where(in_range, denominator, 1.0), 0.0)
        return self._mix(coordinates, self._eigenvectors)


def grayscale_operator(num_channels: int = 3) -> ChannelMixOperator:
    """Colorization's observation: the mean of the channels, y = (1/C)Σ_c x_c, shape `(batch, 1, *spatial)`.

    This is score_sde's decoupled colour basis, whose first axis (1, …, 1)/√C is the observed gray coordinate and
    whose other axes are free: the same subspace, measured as the mean rather than the sum over √C.
    """
    check_positive_int("num_channels", num_channels)
    return ChannelMixOperator(torch.full((1, num_channels), 1.0 / num_channels))


class AveragePoolOperator(LinearOperator):
    """Downsampling by `factor`: each output pixel is the mean of a `factor` × `factor` block of
    `(batch, C, H, W)` samples (H and W divisible by `factor`); AAᵀ = I/factor².

    Args:
        factor (`int`): the block size.
    """

    def __init__(self, factor: int):
        check_positive_int("factor", factor)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"samples must have shape (batch, channels, height, width) with height and width divisible by "
                f"`factor`={self.factor}; got {tuple(x.shape)}."
            )
        return F.avg_pool2d(x, self.factor)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(y, scale_factor=self.factor, mode="nearest") / self.factor**2

    def gram_solve(self, v: torch.Tensor, scale: float | torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
        return v / (_per_sample(scale, v) / self.factor**2 + _per_sample(shift, v))


class MatrixOperator(LinearOperator):
    """Any matrix A of shape `(m, D)` acting on samples flattened to D values: measurements of shape `(batch, m)`.
    The Gram solve uses the eigendecomposition of AAᵀ (computed once; directions with eigenvalue 0 are outside the
    range).

    Args:
        matrix (`torch.Tensor` of shape `(m, D)`): the operator.
        sample_shape (`tuple[int, ...]`, *optional*): the shape of one sample (its values in row-major order are the D
            columns), e.g. `(channels, height, width)`; defaults to `(D,)`.
    """

    def __init__(self, matrix: torch.Tensor, sample_shape: tuple[int, ...] | None = None):
        matrix = torch.as_tensor(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"`matrix` must have shape (measurements, sample size); got {tuple(matrix.shape)}.")
        self.sample_shape = (matrix.shape[1],) if sample_shape is None else tuple(sample_shape)
        if math.prod(self.sample_shape) != matrix.shape[1]:
            raise ValueError(
                f"`sample_shape` {self.sample_shape} must hold the matrix's {matrix.shape[1]} columns."
            )
        self.matrix = matrix.to(torch.float64)
        eigenvalues, self._eigenvectors = torch.linalg.eigh(self.matrix @ self.matrix.T)
        self._in_range = eigenvalues > eigenvalues.max() * 1e-10
        self._eigenvalues = eigenvalues.clamp_min(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"samples must have shape (batch, {', '.join(map(str, self.sample_shape))}); got "
                             f"{tuple(x.shape)}.")
        return x.flatten(1) @ self.matrix.to(device=x.device, dtype=x.dtype).T

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        flat = y @ self.matrix.to(device=y.device, dtype=y.dtype)
        return flat.reshape(y.shape[0], *self.sample_shape)

    def _in_eigenbasis(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self._eigenvectors.to(device=like.device, dtype=like.dtype),
            self._eigenvalues.to(device=like.device, dtype=like.dtype),
            self._in_range.to(like.device),
        )

    def range_projection(self, y: torch.Tensor) -> torch.Tensor:
        vectors, _, in_range = self._in_eigenbasis(y)
        vectors = vectors * in_range
        return (y @ vectors) @ vectors.T

    def rank(self, y: torch.Tensor) -> torch.Tensor:
        return torch.full((y.shape[0],), float(int(self._in_range.sum())), dtype=torch.float64)

    def gram_solve(self, v: torch.Tensor, scale: float | torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
        vectors, eigenvalues, in_range = self._in_eigenbasis(v)
        denominator = _per_sample(scale, v) * eigenvalues + _per_sample(shift, v)
        coordinates = torch.where(in_range, (v @ vectors) / torch.where(in_range, denominator, 1.0), 0.0)
        return coordinates @ vectors.T
