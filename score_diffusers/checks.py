"""One style for bad input and one for failures while running (no Diffusers).

Bad input raises a `ValueError` that names the argument and the values it accepts, before any work starts. A
failure while running (NaN mid-sampling, a solver that does not converge) is not bad input: it raises
`SamplingError`, saying what happened and where.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class SamplingError(RuntimeError):
    """A sampler or solver failed while running: a model output turned NaN or infinite, or a solve did not
    converge. The message says at which step or time."""


def all_finite(values: torch.Tensor) -> bool:
    """Whether `values` hold no NaN or inf, found through one float32 sum (they propagate into it), cheaper than
    `isfinite().all()` on a large tensor."""
    return bool(torch.isfinite(values.sum(dtype=torch.float32)))


def check_choice(argument: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming `argument` and the accepted values unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{argument}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")


def check_int(argument: str, value: Any, minimum: int = 1) -> None:
    """Raise a `ValueError` naming `argument` unless `value` is an integer (not a bool) ≥ `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{argument}` must be an integer >= {minimum}; got {value!r}.")


def check_positive_int(argument: str, value: Any) -> None:
    """Raise a `ValueError` naming `argument` unless `value` is an integer ≥ 1."""
    check_int(argument, value, 1)


def check_number(
    argument: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    none_means: str = "",
) -> None:
    """Raise a `ValueError` naming `argument` and its accepted range unless `value` is a real number in it.

    The range is [low, high] with each end open where asked; NaN is always refused, and so is an infinite value
    unless that end of the range is infinite and closed. `allow_none` accepts None, described by `none_means`.
    """
    if allow_none and value is None:
        return
    accepted = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if accepted:
        accepted = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not accepted:
        if low == -math.inf and high == math.inf:
            interval = "a finite real number" if low_open and high_open else "a real number"
        elif high == math.inf:
            interval = f"a number {'>' if low_open else '>='} {low:g}" + (" (finite)" if high_open else "")
        elif low == -math.inf:
            interval = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            interval = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        alternative = f", or None {none_means}".rstrip() if allow_none else ""
        raise ValueError(f"`{argument}` must be {interval}{alternative}; got {value!r}.")


def check_generator(generator: Any, batch_size: int, batch: str = "`batch_size`") -> None:
    """Raise a `ValueError` unless `generator` is None, a `torch.Generator`, or a list of exactly `batch_size` of them
    (one per sample; `batch` names where the size comes from)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(
                f"`generator` must be one generator or a list of one per sample ({batch} is {batch_size}); got a "
                f"list of {len(generator)}."
            )
        return
    raise ValueError(
        f"`generator` must be a `torch.Generator` or a list of them, one per sample; got {type(generator).__name__} "
        "(seed one with torch.Generator().manual_seed(seed))."
    )
