"""The end of a run: the model card rendered from `hub_cards/` into the output folder, and the upload to the Hub.

A pipeline folder is uploaded with its code for stock Diffusers (`score_diffusers.export`): without it a Diffusers 0.42
Hub repository of this package's pipeline loads nowhere, not even with the package installed (Diffusers' download step
requires the code file of every component whose library is outside Diffusers), and with it the repository also loads
through `DiffusionPipeline.from_pretrained(repo, custom_pipeline=..., trust_remote_code=True)`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger

from score_diffusers.export import custom_pipeline_name, export_code
from score_diffusers.files import written_atomically
from score_diffusers.pipelines import ScoreGuidedPipeline

from .arguments import config_for_logging
from .checkpoints import CHECKPOINT_PREFIX
from .data import ImageBatchDataset
from .loop import TrainingResult
from .samples import SAMPLE_GRID_NAME

logger = get_logger(__name__, log_level="INFO")

HUB_CARDS_DIR = Path(__file__).resolve().parent.parent / "hub_cards"


def write_model_card(
    args: argparse.Namespace,
    output_dir: Path,
    template: str,
    title: str,
    tags: Sequence[str],
    training_config: dict[str, Any],
    pipeline_tag: str | None = "unconditional-image-generation",
    **template_kwargs: Any,
) -> Path:
    """Render `hub_cards/<template>` with `huggingface_hub.ModelCard` into `<output_dir>/README.md`."""
    from huggingface_hub import ModelCard, ModelCardData

    datasets_ = [args.dataset_name] if args.dataset_name and not Path(args.dataset_name).exists() else None
    card_data = ModelCardData(
        library_name="diffusers",
        tags=["score-based", "pytorch", "diffusers", *tags],
        pipeline_tag=pipeline_tag,
        datasets=datasets_,
    )
    repo_id = args.hub_model_id or output_dir.resolve().name
    card = ModelCard.from_template(
        card_data,
        template_path=str(HUB_CARDS_DIR / template),
        title=title,
        repo_id=repo_id,
        training_config_json=json.dumps(training_config, indent=2, default=str),
        sample_grid=SAMPLE_GRID_NAME if (output_dir / SAMPLE_GRID_NAME).exists() else None,
        **template_kwargs,
    )
    path = output_dir / "README.md"
    with written_atomically(path) as partial:
        card.save(partial)
    return path


def write_pipeline_card(
    args: argparse.Namespace,
    output_dir: Path,
    *,
    title: str,
    method: str,
    objective: str,
    script: str,
    data: ImageBatchDataset,
    scheduler,
    num_inference_steps: int,
    result: TrainingResult,
    tags: Sequence[str] = (),
    steps_word: str = "time steps",
    ddpm_usage: str | None = None,
) -> Path:
    """The model card of a saved `ScoreGuidedPipeline` (`hub_cards/pipeline_card.md`); `steps_word` names what
    `num_inference_steps` counts. With `--push_to_hub` the card also says how stock Diffusers loads the repository
    (the upload carries the code, see `finish`)."""
    scheduler_class = type(scheduler).__name__
    score_output = scheduler.convention.prediction_type == "score"
    return write_model_card(
        args,
        output_dir,
        template="pipeline_card.md",
        title=title,
        tags=["diffusers:ScoreGuidedPipeline", *tags],
        training_config=config_for_logging(args),
        method=method,
        objective=objective,
        script=script,
        dataset=data.description,
        num_examples=len(data),
        channels=data.num_channels,
        resolution=data.resolution,
        model_output="returns the score ∇ₓ log p_σ(x)" if score_output else "predicts the noise ε (score = −ε/σ_t)",
        scheduler_class=scheduler_class,
        scheduler_config_json=json.dumps(dict(scheduler.config), indent=2, default=str),
        num_inference_steps=num_inference_steps,
        steps_word=steps_word,
        num_grid_images=args.num_grid_images,
        seed=args.seed,
        steps=result.global_step,
        processes=result.num_processes,
        images_per_second=f"{result.images_per_second:.0f}",
        ddpm_usage=ddpm_usage,
        custom_pipeline=custom_pipeline_name(ScoreGuidedPipeline),
        code_included=bool(args.push_to_hub),
    )


def push_to_hub(args: argparse.Namespace, output_dir: Path) -> str:
    """Create (or reuse) the Hub repository and upload `output_dir`, checkpoints and partial saves excluded."""
    import huggingface_hub

    repo_id = huggingface_hub.create_repo(
        repo_id=args.hub_model_id or output_dir.resolve().name,
        exist_ok=True,
        private=args.hub_private_repo,
        token=args.hub_token,
    ).repo_id
    huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="End of training",
        # Checkpoints, and what an interrupted write left behind (`score_diffusers.files`: `.NAME.partial`,
        # `.NAME.stale`, the `.outputs.partial` staging folder).
        ignore_patterns=[f"{CHECKPOINT_PREFIX}*", f".{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**",
                         ".*.partial", ".*.partial/**", ".*.stale", ".*.stale/**"],
        token=args.hub_token,
    )
    logger.info(f"Uploaded {output_dir} to https://huggingface.co/{repo_id}")
    return repo_id


def export_pipeline_code(output_dir: Path) -> None:
    """Write the code for stock Diffusers (`score_diffusers.export.export_code`) into `output_dir` when it holds a
    saved pipeline (a classifier's folder has no `model_index.json` and is left as it is)."""
    if (output_dir / "model_index.json").is_file():
        exported = export_code(output_dir)
        logger.info(f"Wrote the code for DiffusionPipeline.from_pretrained(..., custom_pipeline="
                    f"{exported.custom_pipeline!r}, trust_remote_code=True) into {output_dir}")


def finish(
    accelerator: Accelerator, args: argparse.Namespace, output_dir: Path, write_card: Callable[[], Path]
) -> None:
    """Write the model card, push to the Hub if asked (a pipeline with its code, `export_pipeline_code`), and close
    the trackers (main process writes, all wait)."""
    if accelerator.is_main_process:
        write_card()
        if args.push_to_hub:
            export_pipeline_code(output_dir)
            push_to_hub(args, output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
