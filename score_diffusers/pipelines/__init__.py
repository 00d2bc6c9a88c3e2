"""Pipelines: score-based sampling with optional classifier guidance."""

from .pipeline_score_guided import ScoreGuidedPipeline

__all__ = ["ScoreGuidedPipeline"]
