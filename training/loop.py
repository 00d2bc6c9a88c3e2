"""The Accelerate training loop shared by the three scripts: AdamW with a Diffusers learning-rate schedule, gradient
accumulation and clipping, an optional EMA with warm-up, TensorBoard scalars, checkpoints and sample grids.

Reproducibility contract: the order of the training data is a function of (seed, epoch) and every random draw
of the loss (noise levels, Gaussian noise) comes from a generator re-seeded from (seed, step, micro-batch, process),
so a run resumed from `checkpoint-N` replays exactly the batches and noise of the uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .arguments import config_for_logging
from .checkpoints import checkpoint_dir, load_ema, resolve_resume_checkpoint, save_checkpoint
from .data import EpochBatchSampler, ImageBatchDataset, check_batch_size, micro_batches
from .samples import GridFunction, save_sample_grid

logger = get_logger(__name__, log_level="INFO")

# Multipliers that decorrelate the per-(step, micro-batch, process) seeds of the loss generator.
_SEED_STRIDES = (1_000_003, 1_009, 7_919)

# `loss_fn(model, batch, generator) -> (loss, scalars to log)`, every random draw from `generator`.
LossFunction = Callable[
    [torch.nn.Module, dict[str, torch.Tensor], torch.Generator], tuple[torch.Tensor, dict[str, float]]
]


def make_accelerator(args: argparse.Namespace, project_name: str, data: ImageBatchDataset) -> Accelerator:
    """An `Accelerator` for training on `data`, logging to TensorBoard under the output folder, seeded per process.

    Raises `ValueError`, before anything is written, if `data` do not fill one global batch of its processes.
    """
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    check_batch_size(len(data), args.train_batch_size, accelerator.num_processes)
    set_seed(args.seed, device_specific=True)
    if not accelerator.is_local_main_process:
        diffusers.utils.logging.set_verbosity_error()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.logger != "none":
            accelerator.init_trackers(project_name, config=config_for_logging(args))
    accelerator.wait_for_everyone()
    logger.info(accelerator.state, main_process_only=False)
    if args.push_to_hub and args.hub_token is not None:
        logger.warning("--hub_token is stored in the process arguments; prefer `huggingface-cli login`.")
    return accelerator


def loss_generator(device: torch.device, seed: int, step: int, micro_batch: int, process_index: int) -> torch.Generator:
    """The generator of one micro-batch's random draws, a pure function of where it is in the run."""
    stride_step, stride_micro, stride_process = _SEED_STRIDES
    derived = seed + stride_step * (step + 1) + stride_micro * micro_batch + stride_process * process_index
    return torch.Generator(device=device).manual_seed(derived % (2**63 - 1))


def uniform_times(batch_size: int, eps: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """t ~ U[eps, 1] of shape `(batch_size,)`."""
    return eps + (1 - eps) * torch.rand(batch_size, generator=generator, device=device)


class TrainingDivergedError(RuntimeError):
    """The loss or the weights turned NaN or infinite while training. The message names the step; nothing was saved
    from it on, so the last checkpoint written before it holds the last good weights."""


def _finite_on_every_process(accelerator: Accelerator, finite: bool) -> bool:
    """Whether `finite` holds on every process: all of them stop together, none waits on the others forever."""
    flags = accelerator.gather(torch.tensor([float(finite)], device=accelerator.device))
    return bool(flags.all())


def _diverged(output_dir: Path, what: str, last_checkpoint_step: int) -> TrainingDivergedError:
    """The error for a run whose `what` turned non-finite, naming its own last checkpoint in `output_dir` (the one
    at `last_checkpoint_step`, which it wrote or resumed from; 0 for none), not another run's newer one."""
    path = checkpoint_dir(output_dir, last_checkpoint_step)
    if last_checkpoint_step == 0:
        kept = "this run had written no checkpoint"
    elif path.is_dir():
        kept = f"the last good checkpoint is {path}"
    else:
        kept = f"this run's last checkpoint, {path}, is no longer there"
    return TrainingDivergedError(
        f"training diverged: {what}. Nothing was saved from this step on; {kept}. "
        "Try a lower --learning_rate or --max_grad_norm, or check the data for NaN."
    )


def check_weights_finite(
    accelerator: Accelerator,
    model: torch.nn.Module,
    ema: EMAModel | None,
    output_dir: Path,
    step: int,
    last_checkpoint_step: int = 0,
) -> None:
    """Raise `TrainingDivergedError` if a weight of `model` or of its EMA is NaN or infinite after `step`: what
    is about to be saved must be finite. `last_checkpoint_step` is the run's last checkpoint, for the message."""
    tensors = [*model.parameters(), *(ema.shadow_params if ema is not None else ())]
    # Element by element, not `all_finite`'s one sum: huge but finite weights must not overflow it into a false alarm.
    finite = all(bool(torch.isfinite(tensor.detach()).all()) for tensor in tensors)
    if not _finite_on_every_process(accelerator, finite):
        raise _diverged(
            output_dir, f"the weights (or their EMA) are NaN or infinite after step {step}", last_checkpoint_step
        )


@dataclass
class TrainingResult:
    """The trained model (EMA weights if kept), how far it got and how fast."""

    model: torch.nn.Module
    global_step: int
    images_per_second: float
    train_seconds: float
    num_processes: int
    step_seconds: list[float]


def train(
    args: argparse.Namespace,
    accelerator: Accelerator,
    model: torch.nn.Module,
    data: ImageBatchDataset,
    loss_fn: LossFunction,
    grid_fn: GridFunction | None = None,
) -> TrainingResult:
    """Train `model` on `data` with `loss_fn(model, batch, generator) -> (loss, scalars)`.

    AdamW with a Diffusers learning-rate schedule, gradient accumulation and clipping, optional EMA with warm-up,
    TensorBoard scalars, a tqdm bar, resumable atomic checkpoints and a sample grid from `grid_fn` every
    `--save_images_steps`. Returns the unwrapped model, carrying the EMA weights when `--use_ema`.

    A NaN or infinite loss (before its optimizer step), or NaN or infinite weights (before a checkpoint and at the
    end), stop the run with `TrainingDivergedError` naming the step: no checkpoint or final model is ever written
    from non-finite weights, and the checkpoints already written are left as they are.
    """
    output_dir = Path(args.output_dir)
    sampler = EpochBatchSampler(
        len(data), args.train_batch_size, args.seed, accelerator.num_processes, accelerator.process_index
    )
    steps_per_epoch = max(1, sampler.batches_per_epoch // args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or (args.num_epochs or 1) * steps_per_epoch

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    # The prepared scheduler steps once per process at each optimizer step (Accelerate's convention).
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema = make_ema(args, accelerator.unwrap_model(model), accelerator.device) if args.use_ema else None

    global_step = 0
    resume = resolve_resume_checkpoint(args)
    if resume is not None:
        global_step, path = resume
        if global_step > max_train_steps:
            raise ValueError(
                f"{path} is at step {global_step}, past the {max_train_steps} steps this run is to train; raise "
                "--max_train_steps (or --num_epochs) to train on, or resume from an earlier checkpoint."
            )
        logger.info(f"Resuming from {path} (step {global_step})")
        try:
            accelerator.load_state(str(path))
            if ema is not None:
                load_ema(path, ema, type(accelerator.unwrap_model(model)), accelerator.device)
        except Exception as error:  # safetensors, torch.load and state-dict errors share no base class
            # Complete by its manifest, yet unreadable: a file corrupted in place, or weights of another model.
            first_line = next(iter(str(error).splitlines()), "")
            raise ValueError(
                f"{path} could not be loaded ({type(error).__name__}: {first_line}); resume from an earlier "
                "checkpoint, or train into a new --output_dir."
            ) from error

    logger.info(
        f"Training on {data.description}: {len(data)} examples, {accelerator.num_processes} process(es), "
        f"{args.train_batch_size} per process × {args.gradient_accumulation_steps} accumulation, "
        f"{max_train_steps} steps ({steps_per_epoch} per epoch)"
    )
    stream = micro_batches(
        data, sampler, global_step * args.gradient_accumulation_steps, args.dataloader_num_workers, accelerator.device
    )
    grid_every = args.save_images_steps or args.checkpointing_steps
    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    images_seen, step_seconds, start_step = 0, [], global_step
    # The last checkpoint of this run (the one it resumed from, or none: 0): those between it and the next one are
    # another run's.
    previous_checkpoint = global_step
    model.train()
    while global_step < max_train_steps:
        step_start = time.perf_counter()
        scalars: dict[str, float] = {}
        losses = []
        for micro in range(args.gradient_accumulation_steps):
            batch = next(stream)
            last_micro = micro == args.gradient_accumulation_steps - 1
            with contextlib.nullcontext() if last_micro else accelerator.no_sync(model):
                generator = loss_generator(accelerator.device, args.seed, global_step, micro, accelerator.process_index)
                if args.random_flip:
                    batch["images"] = random_horizontal_flip(batch["images"], generator)
                with accelerator.autocast():
                    loss, extra = loss_fn(model, batch, generator)
                accelerator.backward(loss / args.gradient_accumulation_steps)
            losses.append(loss.detach().item())
            scalars.update(extra)
            images_seen += batch["images"].shape[0] * accelerator.num_processes
        scalars["loss"] = sum(losses) / args.gradient_accumulation_steps
        # Before the optimizer step, so the weights in memory (and everything saved) stay finite.
        if not _finite_on_every_process(accelerator, all(map(math.isfinite, losses))):
            value = f"{scalars['loss']}" if accelerator.num_processes == 1 else "not finite on at least one process"
            raise _diverged(output_dir, f"the loss is {value} at step {global_step + 1}", previous_checkpoint)
        if args.max_grad_norm > 0:
            scalars["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
            scalars["ema_decay"] = ema.cur_decay_value
        global_step += 1
        step_seconds.append(time.perf_counter() - step_start)
        scalars["lr"] = lr_scheduler.get_last_lr()[0]
        progress.update(1)
        progress.set_postfix(loss=f"{scalars['loss']:.4f}")
        accelerator.log(scalars, step=global_step)

        if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
            check_weights_finite(
                accelerator, accelerator.unwrap_model(model), ema, output_dir, global_step, previous_checkpoint
            )
            save_checkpoint(
                accelerator,
                ema,
                output_dir,
                global_step,
                args.checkpoints_total_limit,
                config_for_logging(args),
                previous_checkpoint,
            )
            previous_checkpoint = global_step
        if grid_fn is not None and global_step % grid_every == 0 and global_step < max_train_steps:
            with ema_weights(accelerator.unwrap_model(model), ema):
                save_sample_grid(
                    accelerator,
                    grid_fn,
                    accelerator.unwrap_model(model),
                    args,
                    output_dir / "samples" / f"step_{global_step:06d}.png",
                )
            model.train()
    progress.close()
    accelerator.wait_for_everyone()

    final = accelerator.unwrap_model(model)
    # The scripts save what this returns.
    check_weights_finite(accelerator, final, ema, output_dir, global_step, previous_checkpoint)
    if ema is not None:
        ema.copy_to(final.parameters())
    final.eval()
    train_seconds = sum(step_seconds)
    return TrainingResult(
        model=final,
        global_step=global_step,
        images_per_second=images_seen / train_seconds if global_step > start_step else float("nan"),
        train_seconds=train_seconds,
        num_processes=accelerator.num_processes,
        step_seconds=step_seconds,
    )


def make_ema(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> EMAModel:
    """An EMA of `model`'s weights with Diffusers' warm-up (`--ema_max_decay`, `--ema_inv_gamma`, `--ema_power`)."""
    ema = EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        foreach=True,
        model_cls=type(model),
        model_config=model.config,
    )
    ema.to(device)
    return ema


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip.reshape(-1, *([1] * (images.ndim - 1))), images.flip(-1), images)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: EMAModel | None) -> Iterator[None]:
    """Temporarily swap the EMA weights into `model` (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())
