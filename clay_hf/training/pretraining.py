"""Pre-training Clay with Accelerate: settings, the learning-rate schedule, checkpoints and the loop.

``scripts/train.py`` is the command line over :func:`train`; the same code runs as one plain process, under
``accelerate launch`` on many GPUs (DDP), across nodes, or sharded with FSDP (wrap ``ClayLayer``).

One optimizer step:

1. take the next batch of this rank (one band set per batch, sensors interleaved over steps);
2. the frozen teacher embeds the batch's RGB bands (Sentinel-1: VV, VH, (VV + VH) / 2), when a teacher is set;
3. ``ClayForPreTraining`` masks, encodes, decodes and returns ``0.9 * reconstruction + 0.1 * representation``;
4. backward (accumulated over ``gradient_accumulation_steps`` batches), gradient clipping, AdamW, schedule;
5. every ``checkpoint_every`` steps an atomic checkpoint: model, optimizer, scheduler and RNG states
   (``accelerator.save_state``), plus this rank's data position and masking generator, so ``resume``
   continues bit for bit where the run stopped.

A non-finite loss on any rank stops every rank before the weights change, with the last good checkpoint intact.

One run per output folder. The main process holds the folder's lock (:func:`clay_hf.locking.output_lock`) for
the whole run, and a run has an id (``run.json``, and ``run_id`` in every checkpoint's ``trainer_state.json``;
``resume`` carries it over). A new run into a folder that holds another one (checkpoints, ``final/``,
``metrics.jsonl``) is refused unless ``resume`` (continue it) or ``overwrite`` (delete those, keep everything
else); pruning to ``keep_checkpoints`` only ever deletes checkpoints of the current run. On ``resume`` the
newest checkpoint is checked first (safetensors header, zip directories of the torch files, JSON state); a
damaged one is named and skipped for the newest intact one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..atomic import apply_umask, atomic_folder, atomic_write_text, is_clay_model_folder
from ..configuration_clay import CLAY_PRESETS, ClayConfig
from ..distributed import all_finite, mean_over_processes
from ..errors import CheckpointError, ClayConfigError, ClayError, NoChipsError, OutputExistsError
from ..image_processing_clay import ClayImageProcessor
from ..modeling_clay import ClayForPreTraining
from ..provenance import PROVENANCE_KEY, model_provenance, record_provenance
from ..sensors import get_sensor

__all__ = [
    "TrainingConfig",
    "NonFiniteLossError",
    "lr_lambda",
    "param_groups",
    "build_model",
    "build_teacher",
    "find_latest_checkpoint",
    "evaluate",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
RUN_FILE = "run.json"  # the run id of the folder's run, written when it starts
METRICS_FILE = "metrics.jsonl"
FINAL_FOLDER = "final"


class NonFiniteLossError(ClayError, FloatingPointError):
    """The loss became NaN or infinite; the run stopped before the weights changed."""


@dataclasses.dataclass
class TrainingConfig:
    """Everything a training run needs besides the architecture (which lives in ``ClayConfig``).

    Args:
        dataset: a folder of Parquet chip shards or a Hub dataset id (streamed).
        output_dir: where checkpoints, metrics and the final model go.
        model: a preset name (``tiny``, ``small``, ``base``, ``large``), a ``config.json`` file, or a pretrained
            folder / Hub id (the same as ``init_from``).
        init_from: continue from pretrained weights (a converted Clay v1.5 folder or Hub id).
        teacher: a DINOv2-with-registers folder or Hub id, or ``"tiny-random"`` (tests and demos); None trains
            without the representation loss.
        teacher_image_size: side the RGB bands are resized to for the teacher (518 in v1.5).
        batch_size: chips per batch per process.
        learning_rate, weight_decay, betas: AdamW (v1.5: 5e-6 when continuing, 0.05, (0.9, 0.95)).
        warmup_steps: linear warm-up from 0; None = 5% of ``max_steps`` (at most 1000).
        min_lr_ratio: the cosine decays to ``min_lr_ratio * learning_rate`` at ``max_steps``.
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (Accelerate's autocast; weights stay float32).
        max_grad_norm: gradient clipping (None or 0 disables it).
        checkpoint_every, keep_checkpoints: checkpoint interval in optimizer steps, and how many to keep.
        stop_after: end this run (with a checkpoint) after this many optimizer steps of the schedule, e.g. to fit
            a job time limit; ``--resume`` goes on from there.
        time_latlon_dropout: probability that a chip's time and location are zeroed (0.2 in v1.5).
        resume: continue the run in ``output_dir`` from its newest intact checkpoint.
        overwrite: start afresh in an ``output_dir`` that holds another run: its checkpoints, ``final/`` and
            ``metrics.jsonl`` are deleted before the first step (other files are kept). Without it (or ``resume``)
            such a folder is refused.
        eval_dataset, eval_batches, eval_every: a held-out chip dataset, and how many of its batches per process
            to evaluate (the same batches and masks every time) at step 0, every ``eval_every`` steps (default:
            at checkpoints) and at the end; logged as ``eval_reconstruction_loss`` (and ``eval_representation_loss``).
        shuffle_buffer, shuffle_shards: chips in the streaming shuffle buffer, and shards read into it at once
            (shards are written per source, so this mixes sensors; datasets pauses 5 s per epoch when > 1).
    """

    # The metadata's help is what `scripts/train.py --help` shows (clay_hf.cli derives the flags from these fields).
    dataset: str = dataclasses.field(metadata={"help": "folder of Parquet chip shards, or a Hub dataset id (streamed)"})
    output_dir: str = dataclasses.field(
        metadata={"help": "output folder (checkpoints, metrics.jsonl, final/)", "aliases": ["--output"]}
    )
    model: str = dataclasses.field(
        default="tiny", metadata={"help": "preset (tiny, small, base, large), a config .json, or a pretrained folder"}
    )
    init_from: str | None = dataclasses.field(
        default=None, metadata={"help": "pretrained folder or Hub id to continue from (e.g. converted Clay v1.5)"}
    )
    teacher: str | None = dataclasses.field(
        default=None,
        metadata={"help": "DINOv2-with-registers folder or Hub id, or 'tiny-random'; none: no representation loss"},
    )
    teacher_image_size: int = dataclasses.field(default=518, metadata={"help": "teacher input side in pixels"})
    batch_size: int = dataclasses.field(default=8, metadata={"help": "chips per batch per process"})
    gradient_accumulation_steps: int = dataclasses.field(default=1, metadata={"help": "batches per optimizer step"})
    learning_rate: float = dataclasses.field(default=1e-4, metadata={"help": "peak AdamW learning rate; v1.5: 5e-6"})
    weight_decay: float = dataclasses.field(default=0.05, metadata={"help": "AdamW weight decay"})
    betas: tuple[float, float] = dataclasses.field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    warmup_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "linear warm-up steps (default: 5% of --max-steps, at most 1000)"}
    )
    min_lr_ratio: float = dataclasses.field(default=0.0, metadata={"help": "cosine floor as a fraction of the peak"})
    max_steps: int = dataclasses.field(default=1000, metadata={"help": "optimizer steps of the whole schedule"})
    mixed_precision: str = dataclasses.field(
        default="no", metadata={"help": "autocast precision", "choices": ("no", "bf16", "fp16")}
    )
    max_grad_norm: float | None = dataclasses.field(
        default=1.0, metadata={"help": "gradient clipping norm; 0 disables"}
    )
    gradient_checkpointing: bool = dataclasses.field(
        default=False, metadata={"help": "recompute activations in backward to save memory"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of initial weights, data order and masks"})
    checkpoint_every: int = dataclasses.field(default=500, metadata={"help": "optimizer steps between checkpoints"})
    keep_checkpoints: int = dataclasses.field(default=3, metadata={"help": "how many checkpoints to keep"})
    log_every: int = dataclasses.field(default=10, metadata={"help": "steps between log lines and metrics records"})
    report_to: str = dataclasses.field(
        default="none", metadata={"help": "Accelerate tracker: none, tensorboard, wandb, all"}
    )
    num_workers: int = dataclasses.field(default=0, metadata={"help": "dataloader worker processes per process"})
    shuffle_buffer: int = dataclasses.field(default=1000, metadata={"help": "chips in the streaming shuffle buffer"})
    shuffle_shards: int = dataclasses.field(default=10, metadata={"help": "shards mixed in the shuffle buffer at once"})
    time_latlon_dropout: float = dataclasses.field(
        default=0.2, metadata={"help": "chance that a chip's time and location are zeroed"}
    )
    resume: bool = dataclasses.field(
        default=False, metadata={"help": "continue from the newest intact checkpoint in --output"}
    )
    overwrite: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "start afresh in an --output that holds another run (deletes its checkpoints, final/ and "
            "metrics.jsonl; other files stay)"
        },
    )
    stop_after: int | None = dataclasses.field(
        default=None, metadata={"help": "end this run after N steps with a checkpoint (job time limits)"}
    )
    attn_implementation: str | None = dataclasses.field(
        default=None, metadata={"help": "attention kernel (default: sdpa)", "choices": ("sdpa", "eager")}
    )
    eval_dataset: str | None = dataclasses.field(
        default=None, metadata={"help": "held-out chip dataset (folder or Hub id) for a fixed-mask eval loss"}
    )
    eval_batches: int = dataclasses.field(default=4, metadata={"help": "eval batches per process"})
    eval_every: int | None = dataclasses.field(
        default=None, metadata={"help": "steps between evals (default: at every checkpoint)"}
    )

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ClayConfigError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ClayConfigError(
                f"batch_size and gradient_accumulation_steps must be at least 1, got {self.batch_size} and "
                f"{self.gradient_accumulation_steps}"
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ClayConfigError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ClayConfigError(
                f"checkpoint_every and keep_checkpoints must be at least 1, got {self.checkpoint_every} and "
                f"{self.keep_checkpoints}"
            )
        if self.resume and self.overwrite:
            raise ClayConfigError(
                "resume and overwrite exclude each other: --resume continues the run in the output folder, "
                "--overwrite deletes it and starts afresh; pass one of them"
            )
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    @property
    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(1000, self.max_steps // 20)


# --------------------------------------------------------------------------------------------------
# schedule (pure)
# --------------------------------------------------------------------------------------------------


def lr_lambda(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``: linear warm-up, then cosine decay.

    ``step`` counts finished optimizer steps (0 before the first), as ``torch.optim.lr_scheduler.LambdaLR`` does.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Schedule:
    """A picklable ``lr_lambda`` with its settings bound (``LambdaLR`` state dicts skip plain functions)."""

    def __init__(self, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_lambda(step, self.warmup_steps, self.max_steps, self.min_lr_ratio)


# --------------------------------------------------------------------------------------------------
# model, teacher, optimizer
# --------------------------------------------------------------------------------------------------


def build_model(config: TrainingConfig, teacher_dim: int | None = None) -> ClayForPreTraining:
    """A ``ClayForPreTraining`` from a preset, a config file, or pretrained weights (always float32)."""
    kwargs: dict[str, Any] = {}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    source = config.init_from
    if source is None and config.model not in CLAY_PRESETS and not config.model.endswith(".json"):
        source = config.model  # a pretrained folder or Hub id given as --model
    if source is not None:
        try:
            model = ClayForPreTraining.from_pretrained(source, dtype=torch.float32, **kwargs)
        except OSError as err:
            if config.init_from is not None:
                raise
            raise ClayConfigError(
                f"--model {config.model!r} is neither a preset ({', '.join(CLAY_PRESETS)}), a config .json file, "
                f"nor a pretrained folder or reachable Hub id ({err.__class__.__name__}: {str(err)[:200]})"
            ) from err
        if teacher_dim is not None and model.config.teacher_dim != teacher_dim:
            raise ClayConfigError(
                f"the pretrained model's proj head outputs teacher_dim={model.config.teacher_dim} but the teacher "
                f"embeds into {teacher_dim}; use a teacher of that width or train without a teacher"
            )
        _record_start(model, config, base=model_provenance(model), source=source)
        return model
    if config.model in CLAY_PRESETS:
        clay_config = ClayConfig.from_preset(config.model)
    else:
        path = Path(config.model)
        if not path.is_file():
            raise ClayConfigError(
                f"--model {config.model!r} is neither a preset ({', '.join(CLAY_PRESETS)}), a config .json file, "
                "nor a pretrained folder"
            )
        clay_config = ClayConfig.from_json_file(str(path))
    if teacher_dim is not None:
        clay_config.teacher_dim = teacher_dim
    if config.attn_implementation:
        clay_config._attn_implementation = config.attn_implementation
    model = ClayForPreTraining(clay_config)
    _record_start(model, config, base=None, source=None)
    return model


def _record_start(model: ClayForPreTraining, config: TrainingConfig, base, source: str | None) -> None:
    """The provenance record of the run's model (:mod:`clay_hf.provenance`); the steps are filled in at the end."""
    if source is None:
        base_text, base_released = None, False
    elif base.kind is None:
        base_text, base_released = f"{source} (origin not recorded)", False
    else:
        base_text, base_released = base.description, base.released
    record_provenance(
        model, "pretrained", steps=0, dataset=str(config.dataset), base=base_text, base_released=base_released
    )


def build_teacher(config: TrainingConfig):
    """The frozen DINOv2 teacher named by ``config.teacher`` (None: no teacher)."""
    if config.teacher is None:
        return None
    from ..teacher import ClayTeacher, tiny_random_teacher

    if config.teacher == "tiny-random":
        return tiny_random_teacher(image_size=config.teacher_image_size)
    return ClayTeacher.from_pretrained(config.teacher, image_size=config.teacher_image_size)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens and embeddings (1-D tensors and learned tokens)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "token" in name or name.endswith("mask_patch"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def get_dataloaders(config: TrainingConfig, processor: ClayImageProcessor, rank: int, world_size: int):
    """This rank's stream of one-band-set batches (mocked in tests; see ``clay_hf.geodata.loader.get_dataloader``)."""
    from ..geodata.loader import get_dataloader

    return get_dataloader(
        config.dataset,
        batch_size=config.batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=config.num_workers,
        seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
        drop_last=True,
        time_latlon_dropout=config.time_latlon_dropout,
        processor=processor,
        max_buffer_input_shards=config.shuffle_shards,
    )


class _Batches:
    """Endless batches over epochs, with a resumable position.

    A loader with its own ``state_dict``/``load_state_dict`` (``clay_hf.geodata.loader.ChipLoader``) keeps the position
    itself and skips consumed batches cheaply on resume. Any other iterable is wrapped: the position is (epoch,
    batches taken), ``set_epoch`` is called per epoch if the loader has it, and resuming fast-forwards.
    """

    def __init__(self, loader) -> None:
        self.loader = loader
        self.native = hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")
        self._epoch = 0
        self.taken = 0
        self._iterator: Iterator[dict[str, Any]] | None = None

    @property
    def epoch(self) -> int:
        return int(self.loader.epoch) if self.native else self._epoch

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict() if self.native else {"epoch": self._epoch, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.native:
            self.loader.load_state_dict(state)
        else:
            self._epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._iterator = None

    def _start_epoch(self) -> None:
        if self.native:
            self._iterator = iter(self.loader)
            return
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self._epoch)
        self._iterator = iter(self.loader)
        for _ in range(self.taken):  # fast-forward after a resume: the order is a function of (seed, epoch)
            next(self._iterator)

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._start_epoch()
        for _ in range(2):  # an empty epoch twice in a row means there is no data for this rank at all
            try:
                batch = next(self._iterator)
                self.taken += 1
                return batch
            except StopIteration:
                if not self.native:
                    self._epoch, self.taken = self._epoch + 1, 0
                self._start_epoch()
        raise NoChipsError(
            "the dataset gave this process no batch in a whole epoch: it has fewer chips of one band set than "
            "batch_size x processes; lower --batch-size or add chips"
        )


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------


def _checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def _checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Every ``checkpoints/checkpoint-<step>`` folder under ``output_dir`` (complete or not), oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=_checkpoint_step)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir/checkpoints`` (temporary folders ignored)."""
    done = [p for p in _checkpoint_dirs(output_dir) if (p / TRAINER_STATE).is_file()]
    return done[-1] if done else None


def _trainer_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json`` ({} when it is missing or unreadable)."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:  # parses the header, checks it against the file size
            weights.keys()
    except (SafetensorError, OSError) as err:
        return f"is not a complete safetensors file ({type(err).__name__}: {err})"
    return None


def _zip_problem(path: Path) -> str | None:
    """torch.save writes zip archives: a truncated one has lost its central directory (at the end)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"is truncated ({size} bytes; its entry {info.filename} needs more)"
    except (zipfile.BadZipFile, OSError) as err:
        return f"is not a complete torch file ({size} bytes; {type(err).__name__}: {err})"
    return None


def _checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, naming the file; None when it looks intact.

    Cheap checks that catch truncated and half-written files without loading them: ``trainer_state.json``
    parses, the model and optimizer files and every process's ``clay_rank<r>.pt`` are there, each
    ``*.safetensors`` header agrees with its file's size, and each torch file (``*.bin``, ``*.pt``, ``*.pkl``,
    zip archives) has its central directory.
    """
    state_path = checkpoint / TRAINER_STATE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        world = int(state["world_size"])
        int(state["step"]), int(state["chips_seen"])
    except FileNotFoundError:
        return f"{state_path} is missing"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{state_path} cannot be read ({type(err).__name__}: {err})"
    names = [p.name for p in checkpoint.iterdir()]
    for what, prefixes in (
        ("model weights (model.safetensors)", ("model", "pytorch_model")),
        ("optimizer state (optimizer.bin)", ("optimizer",)),
    ):
        if not any(name.startswith(prefixes) for name in names):
            return f"{checkpoint} has no {what}"
    for rank in range(world):
        if not (checkpoint / f"clay_rank{rank}.pt").is_file():
            return f"{checkpoint / f'clay_rank{rank}.pt'} is missing"
    for path in sorted(checkpoint.rglob("*")):
        problem = None
        if path.is_file() and path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        elif path.is_file() and path.suffix in (".bin", ".pt", ".pkl", ".pth"):
            problem = _zip_problem(path)
        if problem is not None:
            return f"{path} {problem}"
    return None


def _newest_intact_checkpoint(output_dir: Path, world_size: int) -> Path | None:
    """The checkpoint to resume from: the newest that passes :func:`_checkpoint_problem` (damaged ones are logged).

    Raises:
        CheckpointError: there are checkpoints but none is intact, or the newest intact one was written by another
            number of processes.
    """
    problems = []
    for checkpoint in reversed(_checkpoint_dirs(output_dir)):
        problem = _checkpoint_problem(checkpoint)
        if problem is None:
            written_by = int(_trainer_state(checkpoint)["world_size"])
            if written_by != world_size:
                raise CheckpointError(
                    f"{checkpoint} was written by {written_by} process(es) and this run has {world_size}; resume "
                    f"with {written_by} (each process continues its own shards and generator)"
                )
            if problems:
                logger.warning("resuming from %s, the newest intact checkpoint", checkpoint)
            return checkpoint
        logger.warning("checkpoint %s is damaged: %s; trying the one before it", checkpoint.name, problem)
        problems.append(problem)
    if problems:
        raise CheckpointError(
            f"no intact checkpoint to resume from in {output_dir / 'checkpoints'}: {'; '.join(problems)}. Delete "
            "the damaged checkpoints to start this run again from step 0 with --resume, or start afresh with --overwrite"
        )
    return None


def _save_checkpoint(accelerator, output_dir: Path, step: int, rank_state: dict, trainer_state: dict, keep: int):
    """Write ``checkpoints/checkpoint-{step}`` atomically: everything goes to a temporary folder first.

    Then the oldest checkpoints of this run (``trainer_state["run_id"]``) beyond ``keep`` are deleted; checkpoints
    of any other run, and those without a run id, are left alone.
    """
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(rank_state, tmp / f"clay_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
        apply_umask(tmp)  # safetensors writes model.safetensors 0600 whatever the umask
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        run_id = trainer_state["run_id"]
        ours = [p for p in _checkpoint_dirs(output_dir) if p != final and _trainer_state(p).get("run_id") == run_id]
        for old in ours[: max(0, len(ours) - (keep - 1))]:  # the newest keep - 1 others stay, with this one
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _save_final(accelerator, model, processor: ClayImageProcessor, output_dir: Path, steps: int) -> Path:
    """``save_pretrained`` into ``output_dir/final`` (safetensors, processor config, remote code), atomically."""
    final = output_dir / FINAL_FOLDER
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards; every rank must call it
    if accelerator.is_main_process:
        with atomic_folder(final, replaceable=is_clay_model_folder, what="Clay model folder") as tmp:
            unwrapped = accelerator.unwrap_model(model)
            record = getattr(unwrapped.config, PROVENANCE_KEY, None)
            if isinstance(record, dict):
                record["steps"] = steps
            unwrapped.save_pretrained(tmp, state_dict=state_dict, save_function=accelerator.save)
            processor.save_pretrained(tmp)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------------
# the output folder: one run at a time, and which run
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _RunPlan:
    """What the main process decided about the output folder: the run's id and the checkpoint to resume from."""

    run_id: str
    resume_from: Path | None = None
    trainer_state: dict[str, Any] | None = None  # of resume_from


def _run_outputs(output_dir: Path) -> list[Path]:
    """What a training run leaves in ``output_dir``: checkpoints (finished or not), ``final/``, ``metrics.jsonl``."""
    root = output_dir / "checkpoints"
    unfinished = sorted(p for p in root.glob(f".tmp-{CHECKPOINT_PREFIX}*") if p.is_dir()) if root.is_dir() else []
    outputs = [*_checkpoint_dirs(output_dir), *unfinished]
    return outputs + [p for p in (output_dir / FINAL_FOLDER, output_dir / METRICS_FILE) if p.exists() or p.is_symlink()]


def _describe_outputs(outputs: list[Path], output_dir: Path) -> str:
    """E.g. "checkpoints up to step 40, final/, metrics.jsonl"."""
    steps = [_checkpoint_step(p) for p in outputs if p.name.startswith(CHECKPOINT_PREFIX)]
    parts = []
    if steps:
        parts.append(f"checkpoints up to step {max(steps)}" if len(steps) > 1 else f"a checkpoint at step {steps[0]}")
    if any(p.name.startswith(".tmp-") for p in outputs):
        parts.append("an unfinished checkpoint")
    parts += [p.name + ("/" if p.is_dir() else "") for p in outputs if p.parent == output_dir]
    return ", ".join(parts)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _plan_run(config: TrainingConfig, output_dir: Path, world_size: int) -> _RunPlan:
    """On the main process, holding the folder's lock: refuse, clear or resume the run there; write ``run.json``.

    Raises:
        OutputExistsError: the folder holds another run and neither ``resume`` nor ``overwrite`` is set, or
            (``resume``) its ``final`` is not a Clay model folder.
        CheckpointError: ``resume`` with checkpoints of which none is intact.
    """
    outputs = _run_outputs(output_dir)
    run_file = output_dir / RUN_FILE
    try:
        previous_id = json.loads(run_file.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        previous_id = None
    if config.resume:
        final = output_dir / FINAL_FOLDER
        if final.exists() and not is_clay_model_folder(final) and (not final.is_dir() or any(final.iterdir())):
            raise OutputExistsError(
                f"{final} is not a Clay model folder, and the run's final model would replace it; move it away, then "
                "--resume again",
                path=str(final),
            )
        checkpoint = _newest_intact_checkpoint(output_dir, world_size)
        if checkpoint is None:
            logger.warning("--resume: no checkpoint under %s, starting from step 0", output_dir / "checkpoints")
            plan = _RunPlan(previous_id or uuid.uuid4().hex)
        else:
            state = _trainer_state(checkpoint)
            plan = _RunPlan(state.get("run_id") or previous_id or uuid.uuid4().hex, checkpoint, state)
    else:
        if outputs and not config.overwrite:
            raise OutputExistsError(
                f"{output_dir} holds another training run ({_describe_outputs(outputs, output_dir)}); a new run there "
                "would mix with it and its pruning would delete checkpoints. Pass --resume to continue that run, or "
                "--overwrite to delete its checkpoints, final/ and metrics.jsonl (nothing else) and start afresh",
                path=str(output_dir),
            )
        if outputs:
            logger.warning(
                "--overwrite: deleting the previous run in %s (%s)", output_dir, _describe_outputs(outputs, output_dir)
            )
            for path in outputs:
                _remove(path)
            with contextlib.suppress(OSError):
                (output_dir / "checkpoints").rmdir()  # only when nothing else is in it
        plan = _RunPlan(uuid.uuid4().hex)
    record = {
        "run_id": plan.run_id,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from_step": plan.trainer_state["step"] if plan.trainer_state else None,
    }
    atomic_write_text(run_file, json.dumps(record, indent=2) + "\n")
    return plan


def _from_main_process(accelerator, value: Any) -> Any:
    """The main process's ``value`` on every process (one broadcast; no-op on one process)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value if accelerator.is_main_process else None], from_process=0)[0]


@contextlib.contextmanager
def _claim_output(accelerator, config: TrainingConfig, output_dir: Path) -> Iterator[_RunPlan]:
    """The main process holds ``output_dir``'s lock for the block (other processes take none, so they never block
    each other) and plans the run; every process gets the plan, or raises what stopped the main process."""
    from ..locking import output_lock

    with contextlib.ExitStack() as stack:
        outcome: Any = None
        if accelerator.is_main_process:
            try:
                stack.enter_context(output_lock(output_dir, job="training run"))
                outcome = _plan_run(config, output_dir, accelerator.num_processes)
            except Exception as err:  # every process must learn that the run cannot start, or they would hang
                outcome = err
        sent = outcome
        if isinstance(outcome, Exception) and not isinstance(outcome, ClayError):  # may not pickle: send its text
            sent = ClayError(f"the main process could not start the run ({type(outcome).__name__}: {outcome})")
        shared = _from_main_process(accelerator, sent)
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(shared, Exception):
            raise shared
        yield shared


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, batches: list[dict[str, Any]], teacher=None, seed: int = 0, device=None) -> dict[str, float]:
    """Mean losses over fixed batches with fixed masks (seeded), in eval mode (no band dropping).

    The same batches and seed give the same masks, so values at different steps are comparable.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {"eval_reconstruction_loss": 0.0}
    for batch in batches:
        if device is not None:
            batch = _to_device(batch, device)
        targets = _teacher_embeddings(teacher, batch)
        out = model(
            pixel_values=batch["pixel_values"],
            wavelengths=batch["wavelengths"],
            gsd=batch["gsd"],
            time=batch.get("time"),
            latlon=batch.get("latlon"),
            teacher_embeddings=targets,
            generator=generator,
        )
        sums["eval_reconstruction_loss"] += float(out.reconstruction_loss) / len(batches)
        if out.representation_loss is not None:
            key = "eval_representation_loss"
            sums[key] = sums.get(key, 0.0) + float(out.representation_loss) / len(batches)
    model.train(was_training)
    return sums


def _eval_batches(config: TrainingConfig, processor: ClayImageProcessor, rank: int, world: int) -> list[dict]:
    """``eval_batches`` batches of this process's share of the eval dataset (cycled if it has fewer)."""
    from ..geodata.loader import get_dataloader

    # A seeded shuffle over shards and rows: a fixed sample that mixes the dataset's sensors (not its first files).
    loader = get_dataloader(
        config.eval_dataset,
        batch_size=config.batch_size,
        rank=rank,
        world_size=world,
        seed=config.seed + 1,
        shuffle_buffer=1024,
        drop_last=False,
        processor=processor,
        max_buffer_input_shards=8,
    )
    batches: list[dict] = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == config.eval_batches:
            break
    if not batches:
        raise NoChipsError(f"the eval dataset {config.eval_dataset} gave process {rank} no batch")
    while len(batches) < config.eval_batches:  # every process runs the same number of forward passes (FSDP)
        batches.append(batches[len(batches) % len(batches)])
    return batches


def _teacher_embeddings(teacher, batch: dict[str, Any]) -> torch.Tensor | None:
    """The teacher's targets for one batch, or None when its sensor has no RGB (or VV/VH) bands."""
    if teacher is None:
        return None
    name = batch.get("sensor")
    try:
        sensor = get_sensor(name) if name else None
    except KeyError:
        sensor = None
    if sensor is not None and sensor.is_sar_db:
        return teacher(batch["pixel_values"], is_sar=True)
    if sensor is not None and sensor.rgb_indices is not None:
        return teacher(batch["pixel_values"], rgb_indices=sensor.rgb_indices)
    return None


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(
    config: TrainingConfig,
    dataloader_factory: Callable[..., Any] = get_dataloaders,
    show_progress: bool = True,
    step_callback: Callable[[int, torch.nn.Module, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) pre-training; returns a summary (steps, first and last losses, paths).

    Args:
        config: the run's settings.
        dataloader_factory: ``(config, processor, rank, world_size) -> loader`` (default: the streamed chip
            dataset of ``config.dataset``); a loader yields batches of one band set.
        show_progress: a progress bar on the main process.
        step_callback: called on every process after each optimizer step as ``(step, unwrapped model, losses)``,
            e.g. for custom evaluation.

    Raises:
        OutputExistsError: ``output_dir`` holds another run, and neither ``resume`` nor ``overwrite`` is set.
        OutputLockedError: another training run is writing to ``output_dir`` (its pid is in the message).
        CheckpointError: ``resume`` finds checkpoints but none intact (each damaged file is named).
        NonFiniteLossError: the loss became NaN or infinite.
    """
    from accelerate import Accelerator

    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(output_dir),
    )
    world = accelerator.num_processes
    logger.info(
        "%s on %d process(es), device %s, mixed precision %s",
        accelerator.distributed_type.value,
        world,
        accelerator.device,
        accelerator.mixed_precision,
    )
    # 0. the output folder: locked by the main process for the whole run; refused, cleared or resumed
    with _claim_output(accelerator, config, output_dir) as plan:
        return _train(accelerator, config, plan, dataloader_factory, show_progress, step_callback)


def _train(
    accelerator, config: TrainingConfig, plan: _RunPlan, dataloader_factory, show_progress: bool, step_callback
) -> dict[str, Any]:
    """The body of :func:`train`, run while the main process holds the output folder."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    output_dir = Path(config.output_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(config.seed)  # the same initial weights on every rank

    # 1. model, teacher, optimizer, schedule
    teacher = build_teacher(config)
    model = build_model(config, teacher_dim=teacher.embedding_dim if teacher is not None else None)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    if teacher is not None:
        teacher = teacher.to(accelerator.device)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.learning_rate, betas=config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _Schedule(config.resolved_warmup_steps, config.max_steps, config.min_lr_ratio)
    )
    # The scheduler is stepped here once per optimizer step (a prepared one would step once per process).
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    processor = ClayImageProcessor(patch_size=accelerator.unwrap_model(model).config.patch_size)

    # 2. data (this rank's shards) and the generator of masks and band dropping
    batches = _Batches(dataloader_factory(config, processor, rank, world))
    held_out = _eval_batches(config, processor, rank, world) if config.eval_dataset else None
    generator = torch.Generator().manual_seed(config.seed * 100_003 + rank)

    # 3. resume
    step, chips_seen = 0, 0
    if plan.resume_from is not None:  # checked by the main process: the newest intact checkpoint
        latest = plan.resume_from
        try:
            accelerator.load_state(str(latest))
            rank_state = torch.load(latest / f"clay_rank{rank}.pt", weights_only=False)
        except Exception as err:  # what the checks before loading cannot see: name the checkpoint
            raise CheckpointError(
                f"cannot load the checkpoint {latest} ({type(err).__name__}: {err}); delete it to resume from the one "
                "before, or start afresh with --overwrite"
            ) from err
        generator.set_state(rank_state["generator"])
        batches.load_state_dict(rank_state["data"])
        step, chips_seen = int(plan.trainer_state["step"]), int(plan.trainer_state["chips_seen"])
        logger.info("resumed from %s at step %d", latest, step)
    if step >= config.max_steps:
        logger.info("already at step %d of %d", step, config.max_steps)

    if config.report_to != "none":
        accelerator.init_trackers("clay", config={k: str(v) for k, v in dataclasses.asdict(config).items()})
    metrics_path = output_dir / METRICS_FILE
    stop_signal = {"set": False}

    def _on_sigterm(signum, frame):  # a cluster's pre-emption notice: checkpoint at the next step, then exit
        stop_signal["set"] = True

    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm) if _in_main_thread() else None
    progress = tqdm(
        total=config.max_steps,
        initial=step,
        desc="pre-training",
        unit="step",
        dynamic_ncols=True,
        disable=not (show_progress and accelerator.is_local_main_process),
    )
    stop_at = config.max_steps if config.stop_after is None else min(config.max_steps, step + config.stop_after)
    first_losses: dict[str, float] | None = None
    last: dict[str, float] = {}
    window_start, window_chips = time.perf_counter(), 0
    unwrapped = accelerator.unwrap_model(model)
    eval_history: list[dict[str, float]] = []

    def run_eval() -> None:
        metrics = evaluate(model, held_out, teacher, config.seed, accelerator.device)
        metrics = mean_over_processes(accelerator, metrics, ("eval_reconstruction_loss", "eval_representation_loss"))
        eval_history.append({"step": step, **metrics})
        if accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            logger.info("step %d eval: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    if held_out is not None and step == 0:
        run_eval()
    try:
        while step < stop_at:
            losses: dict[str, list[float]] = {"loss": [], "reconstruction_loss": [], "representation_loss": []}
            for _ in range(config.gradient_accumulation_steps):
                # 4. one micro-batch: teacher targets, masked reconstruction, losses
                batch = _to_device(next(batches), accelerator.device)
                targets = _teacher_embeddings(teacher, batch)
                scale = 0.1 if batch.get("sensor") == "modis" else 1.0  # MODIS: reconstruction / 10, as in v1.5
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        out = model(
                            pixel_values=batch["pixel_values"],
                            wavelengths=batch["wavelengths"],
                            gsd=batch["gsd"],
                            time=batch.get("time"),
                            latlon=batch.get("latlon"),
                            teacher_embeddings=targets,
                            reconstruction_loss_scale=scale,
                            generator=generator,
                        )
                        loss = out.loss
                        if out.representation_loss is None:
                            loss = loss + 0.0 * out.projected_cls.sum()  # keep `proj` in the graph for DDP
                    _check_finite(accelerator, loss, step, output_dir)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                losses["loss"].append(float(out.loss.detach()))
                losses["reconstruction_loss"].append(float(out.reconstruction_loss.detach()))
                if out.representation_loss is not None:
                    losses["representation_loss"].append(float(out.representation_loss.detach()))
                window_chips += batch["pixel_values"].shape[0] * world
            step += 1
            chips_seen += config.batch_size * config.gradient_accumulation_steps * world
            # Means over processes; the representation loss only over those whose batches had a teacher target.
            last = mean_over_processes(accelerator, {key: sum(v) / len(v) for key, v in losses.items() if v}, losses)
            has_repr = "representation_loss" in last
            first_losses = first_losses or dict(last)
            progress.update(1)
            if step_callback is not None:
                step_callback(step, unwrapped, last)

            # 5. logs
            if step % config.log_every == 0 or step == stop_at or step == 1:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "epoch": batches.epoch,
                    "lr": scheduler.get_last_lr()[0],
                    "chips_per_s": window_chips / max(elapsed, 1e-9),
                    "chips_seen": chips_seen,
                    **last,
                }
                window_start, window_chips = time.perf_counter(), 0
                progress.set_postfix(loss=f"{last['loss']:.4f}", chips_s=f"{record['chips_per_s']:.1f}")
                if accelerator.is_main_process:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    logger.info(
                        "step %d/%d loss %.4f (reconstruction %.4f%s) lr %.2e %.1f chips/s",
                        step,
                        config.max_steps,
                        last["loss"],
                        last["reconstruction_loss"],
                        f", representation {last['representation_loss']:.4f}" if has_repr else "",
                        record["lr"],
                        record["chips_per_s"],
                    )
                if config.report_to != "none":
                    accelerator.log(record, step=step)

            # 6. evaluation, checkpoints (and a clean stop on SIGTERM, seen by every process at once)
            stopping = mean_over_processes(accelerator, {"stop": 1.0} if stop_signal["set"] else {}, ("stop",)) != {}
            eval_every = config.eval_every or config.checkpoint_every
            if held_out is not None and (step % eval_every == 0 or step == stop_at or stopping):
                run_eval()
            if step % config.checkpoint_every == 0 or step == stop_at or stopping:
                rank_state = {"generator": generator.get_state(), "data": batches.state_dict()}
                trainer_state = {
                    "step": step,
                    "chips_seen": chips_seen,
                    "max_steps": config.max_steps,
                    "world_size": world,
                    "run_id": plan.run_id,
                    "config": dataclasses.asdict(config),
                }
                _save_checkpoint(accelerator, output_dir, step, rank_state, trainer_state, config.keep_checkpoints)
            if stopping:
                logger.warning("stopped by SIGTERM at step %d; continue with --resume", step)
                break
    finally:
        progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    # 7. the final model
    final = None
    if step >= config.max_steps:
        final = _save_final(accelerator, model, processor, output_dir, step)
    if config.report_to != "none":
        accelerator.end_training()
    del unwrapped
    return {
        "step": step,
        "max_steps": config.max_steps,
        "first": first_losses,
        "last": last,
        "final_model": str(final) if final is not None else None,
        "checkpoint": str(find_latest_checkpoint(output_dir)),
        "world_size": world,
        "run_id": plan.run_id,
        "eval": eval_history,
    }


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _check_finite(accelerator, loss: torch.Tensor, step: int, output_dir: Path) -> None:
    """Stop every rank (before backward) when any rank's loss is NaN or infinite."""
    if not all_finite(accelerator, loss):
        latest = find_latest_checkpoint(output_dir)
        raise NonFiniteLossError(
            f"the loss became {float(loss.detach()):.4g} at step {step + 1} (on at least one process); the weights were not "
            f"updated. Last good checkpoint: {latest or 'none yet'}. Lower the learning rate, check the data for "
            "extreme values, or try --mixed-precision no, then --resume"
        )
