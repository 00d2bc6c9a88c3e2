"""Pipelines: score-based sampling with optional classifier guidance; inpainting, SDEdit and inverse problems."""

from .pipeline_score_guided import ScoreGuidedPipeline
from .pipeline_score_img2img import ScoreImg2ImgPipeline
from .pipeline_score_inpaint import ScoreInpaintPipeline
from .pipeline_score_inverse import InverseProblemPipelineOutput, ScoreInverseProblemPipeline

__all__ = [
    "InverseProblemPipelineOutput",
    "ScoreGuidedPipeline",
    "ScoreImg2ImgPipeline",
    "ScoreInpaintPipeline",
    "ScoreInverseProblemPipeline",
]
