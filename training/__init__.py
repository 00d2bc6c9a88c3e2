"""Accelerate training scripts of score_diffusers; `common` holds what the three scripts share."""
