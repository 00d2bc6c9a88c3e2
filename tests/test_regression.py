"""The recorded behaviour of every scheduler configuration, the pipeline, the likelihood and the training losses
(`regression_cases.py`) holds within float tolerance."""

from __future__ import annotations

import pytest
import torch
from regression_cases import FIXTURE_PATH, record
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def recomputed() -> dict[str, torch.Tensor]:
    return record()


def test_every_recorded_case_is_recomputed(recomputed):
    """Configurations added to the common tests later are recomputed too, but only the recorded ones are compared."""
    assert set(load_file(str(FIXTURE_PATH))) <= set(recomputed)


@pytest.mark.parametrize("name", sorted(load_file(str(FIXTURE_PATH))))
def test_regression_case_is_unchanged(recomputed, name):
    torch.testing.assert_close(recomputed[name], load_file(str(FIXTURE_PATH))[name], rtol=1e-5, atol=1e-5)
