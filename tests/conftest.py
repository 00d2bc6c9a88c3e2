"""Fixtures and test generation only; the shared helpers live in `helpers.py`."""

from __future__ import annotations

import pytest
import torch
from helpers import describe_config, make_mixture

from score_diffusers.testing import GaussianMixture

# The suite drives tiny tensors, for which a second intra-op thread only adds synchronisation cost (torch.softmax on a
# (8, 6) tensor takes milliseconds with two threads on a busy two-core machine, microseconds with one).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    """A fixed 6-component Gaussian mixture in 16 dimensions with unequal weights and spreads."""
    return make_mixture()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test of a scheduler test class that asks for `config` once per entry of the class's `configs`."""
    configs = getattr(metafunc.cls, "configs", None)
    if configs is not None and "config" in metafunc.fixturenames:
        metafunc.parametrize("config", configs, ids=[describe_config(config) for config in configs])
