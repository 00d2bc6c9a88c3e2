"""score_diffusers: score-based generative modeling in the Hugging Face Diffusers ecosystem.

The top level imports its parts lazily, as Diffusers does: `import score_diffusers.sde`, `.conventions`,
`.sampling`, `.operators` and `.testing` load neither Diffusers nor transformers, and `from score_diffusers import X` loads only
the module that defines X.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name → the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "SDE": "sde",
    "VESDE": "sde",
    "VPSDE": "sde",
    "SubVPSDE": "sde",
    "ModelConvention": "conventions",
    "SamplingError": "checks",
    "AnnealedLangevinScheduler": "schedulers",
    "PredictorCorrectorScheduler": "schedulers",
    "ProbabilityFlowScheduler": "schedulers",
    "SDEDPMSolverScheduler": "schedulers",
    "ScoreSchedulerOutput": "schedulers",
    "log_likelihood": "likelihood",
    "LikelihoodOutput": "likelihood",
    "dequantized_log_likelihood": "likelihood",
    "DequantizedLikelihoodOutput": "likelihood",
    "encode": "likelihood",
    "decode": "likelihood",
    "ScoreGuidedPipeline": "pipelines",
    "ScoreImg2ImgPipeline": "pipelines",
    "ScoreInpaintPipeline": "pipelines",
    "ScoreInverseProblemPipeline": "pipelines",
    "InverseProblemPipelineOutput": "pipelines",
    "LinearOperator": "operators",
    "MaskOperator": "operators",
    "ChannelMixOperator": "operators",
    "AveragePoolOperator": "operators",
    "MatrixOperator": "operators",
    "grayscale_operator": "operators",
    "EpsilonToScore": "models",
    "NoiseConditionalClassifier": "models",
    "DenoisedInputClassifier": "models",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on first use
    from .checks import SamplingError  # noqa: F401
    from .conventions import ModelConvention  # noqa: F401
    from .likelihood import (  # noqa: F401
        DequantizedLikelihoodOutput,
        LikelihoodOutput,
        decode,
        dequantized_log_likelihood,
        encode,
        log_likelihood,
    )
    from .models import DenoisedInputClassifier, EpsilonToScore, NoiseConditionalClassifier  # noqa: F401
    from .operators import (  # noqa: F401
        AveragePoolOperator,
        ChannelMixOperator,
        LinearOperator,
        MaskOperator,
        MatrixOperator,
        grayscale_operator,
    )
    from .pipelines import (  # noqa: F401
        InverseProblemPipelineOutput,
        ScoreGuidedPipeline,
        ScoreImg2ImgPipeline,
        ScoreInpaintPipeline,
        ScoreInverseProblemPipeline,
    )
    from .schedulers import (  # noqa: F401
        AnnealedLangevinScheduler,
        PredictorCorrectorScheduler,
        ProbabilityFlowScheduler,
        ScoreSchedulerOutput,
        SDEDPMSolverScheduler,
    )
    from .sde import SDE, SubVPSDE, VESDE, VPSDE  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
