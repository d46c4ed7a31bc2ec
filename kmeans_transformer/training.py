# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Training a model of this package on streamed tasks, with Accelerate.

`train(model, loss_function, make_stream, args)` is the one training loop every learned model here uses:

- data: `make_stream(start)` returns a `datasets.IterableDataset` (or any torch iterable dataset) whose first example
  is task number `start` of a reproducible stream (`kmeans_transformer.tasks.task_stream`); the global batch of step
  `s` is tasks `s·B .. s·B + B - 1`, so a resumed run sees exactly the tasks an uninterrupted run would have seen;
- processes: the loop runs unchanged on a CPU, one GPU or several processes (`accelerate launch` or `torchrun`).
  Batches are split across processes (`split_batches=True`: each of P processes takes B / P tasks of the same global
  batch) and DDP averages the gradients, so P processes follow the same trajectory as one process with the same
  global batch, up to the order of floating-point additions;
- optimisation: Adam at `learning_rate`, optional gradient clipping (`max_grad_norm`), and a plateau decay
  (`torch.optim.lr_scheduler.ReduceLROnPlateau`, stepped every `log_steps` on the mean loss of those steps);
- outputs, in `output_dir`: `checkpoint-<step>/` every `save_steps` (the model in `save_pretrained` format, a
  `training_state.pt` with the optimiser, scheduler and step, and whatever `write_card` adds) and the final model at
  the top level; each directory appears complete or not at all. `resume_from_checkpoint` continues a run from one;
- logging through Accelerate's trackers: `log.jsonl` always (one JSON object per logged step), TensorBoard too when
  `report_to` asks for it and it is installed; a tqdm progress bar on the main process.

`loss_function(model, batch)` returns the scalar loss to minimise and a dict of floats to log beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .files import check_new_path, replacing_directory


TRAINING_STATE = "training_state.pt"


@dataclasses.dataclass
class TrainingArguments:
    """Settings of `train` (see the module docstring)."""

    output_dir: str
    max_steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0
    max_grad_norm: float | None = None
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    min_learning_rate: float = 1e-5
    log_steps: int = 10
    save_steps: int = 500
    resume_from_checkpoint: str | None = None
    overwrite_output_dir: bool = False
    report_to: tuple[str, ...] = ("jsonl",)
    cpu: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "log_steps", "save_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        unknown = set(self.report_to) - {"jsonl", "tensorboard"}
        if unknown:
            raise ValueError(f"unknown trackers {sorted(unknown)}; choose from 'jsonl' and 'tensorboard'")


@dataclasses.dataclass
class TrainingResult:
    """What `train` returns: the trained (unwrapped) model, the last step and the logged history."""

    model: torch.nn.Module
    step: int
    history: list[dict]
    output_dir: Path


def _jsonl_tracker_class():
    from accelerate.tracking import GeneralTracker, on_main_process

    class JSONLinesTracker(GeneralTracker):
        """An Accelerate tracker appending one JSON object per `log` call to `<logging_dir>/log.jsonl`."""

        name = "jsonl"
        requires_logging_directory = True

        def __init__(self, run_name: str, logging_dir):
            super().__init__()
            self.run_name = run_name
            self.path = Path(logging_dir) / "log.jsonl"
            self.path.parent.mkdir(parents=True, exist_ok=True)

        @property
        def tracker(self):
            return self.path

        @on_main_process
        def store_init_configuration(self, values: dict):
            with open(self.path.parent / "training_args.json", "w") as handle:
                json.dump(values, handle, indent=2, default=str)

        @on_main_process
        def log(self, values: dict, step: int | None = None, **kwargs):
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": step, **values}) + "\n")

    return JSONLinesTracker


def _trackers(args: TrainingArguments, output_dir: Path) -> list:
    trackers = []
    if "jsonl" in args.report_to:
        trackers.append(_jsonl_tracker_class()("train", output_dir))
    if "tensorboard" in args.report_to:
        try:
            import tensorboard  # noqa: F401
        except ImportError as error:
            raise ImportError("report_to asks for TensorBoard, which is not installed (pip install tensorboard)") from error
        trackers.append("tensorboard")
    return trackers


def _check_output(args: TrainingArguments) -> Path:
    output_dir = Path(args.output_dir)
    if args.resume_from_checkpoint is None and output_dir.exists() and any(output_dir.iterdir()):
        check_new_path(output_dir, overwrite=args.overwrite_output_dir, how="pass --overwrite to start afresh")
    return output_dir


def _write_checkpoint(accelerator, model, optimizer, scheduler, step: int, directory: Path, write_card) -> None:
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(directory)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        directory / TRAINING_STATE,
    )
    if write_card is not None:
        write_card(unwrapped, directory)


def save_checkpoint(accelerator, model, optimizer, scheduler, step, directory: Path, write_card=None, final=False):
    """Write the model (`save_pretrained`), the optimiser state and the card to `directory`.

    A `checkpoint-<step>` directory appears complete or not at all. The final model (`final=True`) goes to the top
    of the output directory beside the checkpoints and the log: it is built in a temporary sibling directory and each
    of its files is then renamed into place.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        target = directory.parent / f".{directory.name}-final" if final else directory
        with replacing_directory(target, overwrite=True) as partial:
            _write_checkpoint(accelerator, model, optimizer, scheduler, step, partial, write_card)
        if final:
            for path in sorted(target.iterdir()):
                os.replace(path, directory / path.name)
            target.rmdir()
    accelerator.wait_for_everyone()


def _resume(model, optimizer, scheduler, checkpoint: Path) -> int:
    from safetensors.torch import load_file

    state_path = checkpoint / TRAINING_STATE
    weights_path = checkpoint / "model.safetensors"
    if not state_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (it needs model.safetensors and {TRAINING_STATE})")
    model.load_state_dict(load_file(weights_path), strict=True)
    state = torch.load(state_path, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


@torch.enable_grad()  # gradients are recorded even when the caller runs under `torch.no_grad()`
def train(
    model: torch.nn.Module,
    loss_function: Callable,
    make_stream: Callable[[int], torch.utils.data.IterableDataset],
    args: TrainingArguments,
    write_card: Callable | None = None,
) -> TrainingResult:
    """Train `model` on the stream `make_stream(start)` for `args.max_steps` steps (see the module docstring).

    `write_card(model, directory)` (optional) adds files to every checkpoint, for example a model card with the
    current evaluation figures. Returns the trained model (unwrapped from DDP) with the logged history.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from tqdm.auto import tqdm

    output_dir = _check_output(args)
    accelerator = Accelerator(
        cpu=args.cpu,
        log_with=_trackers(args, output_dir),
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if args.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size ({args.batch_size}) must be a multiple of the number of processes ({accelerator.num_processes})")
    set_seed(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=args.plateau_factor, patience=args.plateau_patience, min_lr=args.min_learning_rate
    )
    step = 0
    if args.resume_from_checkpoint is not None:
        step = _resume(model, optimizer, scheduler, Path(args.resume_from_checkpoint))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("train", config={k: v for k, v in dataclasses.asdict(args).items() if k != "report_to"})
    loader = torch.utils.data.DataLoader(make_stream(step * args.batch_size), batch_size=args.batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    history, window = [], []
    bar = tqdm(total=args.max_steps, initial=step, desc="training", disable=not (args.progress and accelerator.is_main_process))
    batches = iter(loader)
    model.train()
    while step < args.max_steps:
        batch = next(batches)
        loss, metrics = loss_function(model, batch)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if args.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        step += 1
        window.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        if step % args.log_steps == 0 or step == args.max_steps:
            mean_loss = sum(window) / len(window)
            scheduler.step(mean_loss)
            record = {"loss": mean_loss, "learning_rate": optimizer.param_groups[0]["lr"], **metrics}
            accelerator.log(record, step=step)
            history.append({"step": step, **record})
            bar.set_postfix(loss=f"{mean_loss:.4g}")
            window = []
        bar.update(1)
        if step % args.save_steps == 0 and step < args.max_steps:
            save_checkpoint(accelerator, model, optimizer, scheduler, step, output_dir / f"checkpoint-{step}", write_card)
    bar.close()
    save_checkpoint(accelerator, model, optimizer, scheduler, step, output_dir, write_card, final=True)
    accelerator.end_training()
    return TrainingResult(accelerator.unwrap_model(model), step, history, output_dir)
