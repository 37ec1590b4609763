"""scripts/benchmark.py: the quick mode produces the report (every section: embeddings, training, data, search,
finder, prediction, onnx); FLOP counts, the search helpers, the checks' verdicts and exit status, a light --help,
and the atomic write.

No timing is asserted here: speed is a property of the machine, checked by reading BENCHMARKS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clay_hf import ClayConfig, ClayForPreTraining, ClayModel

from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench_script():
    module = load_script(SCRIPT)
    module.import_heavy_modules()  # what parse_args does after parsing, for the tests that call functions directly
    return module


@pytest.mark.slow
def test_quick_run_writes_the_table(tmp_path):
    output = tmp_path / "bench.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--device",
            "cpu",
            "--sizes",
            "tiny",
            "--chip-sizes",
            "32",
            "--train-sizes",
            "tiny",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = output.read_text()
    assert report == result.stdout.rstrip("\n") + "\n"
    for heading in (
        "## Matmul peak",
        "## ClayModel embeddings",
        "## ClayForPreTraining step",
        "## Checks",
        "## Data pipeline",
        "## Scoring every embedding, and FAISS beside it (1024 dims, float16)",
        "## A scene to detections (128 x 128 px, 10 bands)",
        "## Prediction maps: tiled segmentation (128 x 128 px scene)",
        "## onnxruntime against the eager model",
    ):
        assert heading in report
    assert "| build (read windows, tile, write Parquet) | 108 |" in report  # BigEarthNet: 12 patches x 9 chips
    assert "| stream (read, decode, normalise, batch) | 108 |" in report
    assert "what a tiny training step at 32 px consumes" in report
    model_sections = report.split("## Scoring every embedding", 1)[0]
    rows = [line for line in model_sections.splitlines() if line.startswith("| tiny | 32 |")]
    assert len(rows) == 3  # float32 and bfloat16 embeddings, one training step
    _check_quick_sections(report)
    assert "| chips/s |" in report and "peak MiB" in report and "packed MiB" in report
    assert "| float32 | `CpuPrepackedLinear` |" in report  # the opt-in CPU inference kernel is part of the peak
    assert "SKIP  float32 base@128" in report  # the reference case is not part of a quick run
    # The measured cases are reported but not judged: the thresholds are meant for the full run's settings.
    checks = report.split("## Checks", 1)[1].split("Notes:", 1)[0]
    assert "not checked in --quick  bfloat16 (cast) tiny@32 is" in checks
    assert "not checked in --quick  streaming gives" in checks
    assert "not checked in --quick  prediction tiny at 32 px, 25% overlap: stitching + IO add" in checks
    assert "not checked in --quick  onnxruntime float32 tiny@32 runs" in checks
    assert "PASS" not in checks and "FAIL" not in checks


def _cells(report: str, start: str) -> list[list[str]]:
    """The cells of the table rows of ``report`` that start with ``start``."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines() if line.startswith(start)]


def _check_quick_sections(report: str) -> None:
    """The quick run's search, finder, prediction and onnx rows: what ran, and the numbers that are not timings."""
    search = _cells(report, "| 2,000 |")
    assert [row[1].split(",")[0] for row in search] == [
        "finder `score_embeddings`",
        "finder `score_embeddings`",
        "exact inner-product top-10",
        "FAISS `IVF45",
    ]
    assert 0.0 < float(search[3][8]) <= 1.0  # recall@10 of FAISS against the exact top-10
    finder = _cells(report, "| tiny | 64 | 4 |")  # a 128 px scene in 64 px chips, with their patch tokens
    assert [(row[4], row[5], row[6], row[12]) for row in finder] == [
        ("chip", "cosine", "4", "1"),
        ("patch", "classifier", "256", "2"),
    ]
    assert finder[0][3] == "24"  # 8 x 8 patches x 192 dims of float16 tokens per chip, in KiB
    maps, onnx_section = report.split("## Prediction maps", 1)[1].split("## onnxruntime against the eager model", 1)
    assert [(row[2], row[4]) for row in _cells(maps, "| tiny | 32 | ")] == [("0%", "16"), ("25%", "25")]
    onnx = {row[2]: row for row in _cells(onnx_section, "| tiny | 32 | ")}
    assert list(onnx) == ["eager float32", "onnxruntime float32", "onnxruntime int8 (dynamic)", "eager bfloat16"]
    assert float(onnx["onnxruntime float32"][7]) < 1e-4  # max abs diff of pooler_output to eager float32
    assert float(onnx["onnxruntime int8 (dynamic)"][8]) > 0.9  # cosine to float32 (min over 12 real chips)
    assert "- tiny@32: int8 is" in report


def _embedding(bench_script, dtype: str, chips_per_s: float, cosine: float | None = None):
    """A base@128 embedding result with given numbers (8 chips per iteration, 46.34 GFLOP per chip)."""
    return bench_script.EmbeddingResult(
        size="base",
        chip_px=128,
        tokens=257,
        dtype=dtype,
        mode="-" if dtype == "float32" else "cast",
        batch=8,
        iters=1,
        seconds_per_iter=8 / chips_per_s,
        flops_per_chip=46_340_000_000,
        peak_flops=None,
        weights=0,
        memory_rise=None,
        generator_calls=0,
        cosine_min=cosine,
        cosine_mean=cosine,
    )


def _peak(bench_script, dtype: str, flops_per_s: float):
    return bench_script.PeakPoint(dtype, "x @ w.T", 1024, {"start": flops_per_s, "end": flops_per_s})


def test_a_failed_check_fails_a_full_run_and_not_a_quick_one(bench_script):
    fp32 = _embedding(bench_script, "float32", 2.0)  # 92.7 GFLOP/s of a 100 GFLOP/s peak
    slow = _embedding(bench_script, "bfloat16", 2.72, cosine=0.9999)  # 1.36x float32: under the 2x threshold
    fast = _embedding(bench_script, "bfloat16", 4.4, cosine=0.9999)  # 2.2x
    fp32.peak_flops, slow.peak_flops, fast.peak_flops = 100e9, 200e9, 200e9
    failing = bench_script.checks([fp32, slow])
    assert [ok for _, ok in failing] == [True, False, True]
    assert "is 1.36x as fast as float32 (need >= 2x)" in failing[1][0]
    assert bench_script.exit_status(failing, quick=False) == 1
    assert bench_script.exit_status(failing, quick=True) == 0
    assert [bench_script.verdict(ok, quick=False) for _, ok in failing] == ["PASS", "FAIL", "PASS"]
    assert {bench_script.verdict(ok, quick=True) for _, ok in failing} == {"not checked in --quick"}
    passing = bench_script.checks([fp32, fast])
    assert [ok for _, ok in passing] == [True, True, True]
    assert bench_script.exit_status(passing, quick=False) == 0
    missing = bench_script.checks([])  # the reference case was not run: skipped, not failed
    assert [ok for _, ok in missing] == [None] and bench_script.verdict(None, quick=False) == "SKIP"
    assert bench_script.exit_status(missing, quick=False) == 0


def test_main_exits_with_status_1_when_a_check_of_a_full_run_fails(bench_script, monkeypatch, capsys):
    """main() end to end with given measurements (the timed cases are replaced, the checks and report are real)."""

    def peaks(device, dtypes, sizes, when, points=None, **settings):
        return (
            points
            if points is not None
            else [_peak(bench_script, "float32", 100e9), _peak(bench_script, "bfloat16", 200e9)]
        )

    def embeddings(args, progress):
        progress.update(2)
        return [_embedding(bench_script, "float32", 2.0), _embedding(bench_script, "bfloat16", 2.72, 0.9999)], True

    monkeypatch.setattr(bench_script, "measure_matmul_peak", peaks)
    monkeypatch.setattr(bench_script, "run_embedding_cases", embeddings)
    argv = [
        "--device",
        "cpu",
        "--sizes",
        "base",
        "--chip-sizes",
        "128",
        "--train-sizes",
        "none",
        "--data-packages",
        "none",
        "--allocator",
        "default",
        "--sections",
        "embeddings,training,data",
    ]
    assert bench_script.main(argv) == 1
    out, err = capsys.readouterr()
    assert "FAIL  bfloat16 (cast) base@128 is 1.36x as fast as float32 (need >= 2x)" in out
    assert "PASS  float32 base@128 reaches 92.7% of the float32 matmul peak" in out
    assert err.splitlines()[-1] == "error: 1 of 3 checks failed (the FAIL lines under '## Checks')"
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1
    monkeypatch.setattr(bench_script, "run_embedding_cases", lambda args, progress: ([], True))
    assert bench_script.main(argv) == 0  # nothing measured: every check is skipped, none failed


def _heavy_imports(*args: str) -> set[str]:
    """The modules of torch, transformers, clay_hf, tqdm and numpy that ``python -X importtime ARGS`` imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert "argparse" in imported  # the listing is there (an empty one would pass anything)
    return {name for name in imported if name.split(".")[0] in ("torch", "transformers", "clay_hf", "tqdm", "numpy")}


def test_help_imports_nothing_beyond_the_shared_command_line():
    """--help answers before the script's own imports (the FLOP counter, the allocator tuning, the data pipeline):
    it imports no module that ``import clay_hf.cli``, which every script needs, does not import itself.

    (clay_hf.cli loads clay_hf, and with it transformers and torch: that part of the cost is shared by every script.)
    """
    shared = _heavy_imports("-c", "import clay_hf.cli")
    assert _heavy_imports(str(SCRIPT), "--help") - shared == set()
    assert not {"torch.utils.flop_counter", "clay_hf.runtime", "clay_hf.geodata.sample_data"} & shared


def test_help_has_examples(bench_script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_script.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--sizes", "huge"], "unknown model size 'huge'"),
        (["--sizes", "base,huge"], "unknown model size 'huge'"),
        (["--train-sizes", "tiny", "huge"], "unknown model size 'huge'"),
        (["--dtypes", "float64"], "unknown dtype 'float64'"),
        (["--chip-sizes", "128,12x"], "--chip-sizes takes chip sides in pixels (whole numbers), got '12x'"),
        (["--sizes", "none"], "--sizes, --chip-sizes and --dtypes need at least one value each"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--min-time", "-1"], "--min-time must be >= 0"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--bf16-mode", "half"], "invalid choice: 'half'"),
        (["--sections", "search,maps"], "unknown section 'maps'; expected some of embeddings, training, data"),
        (["--sections", "none"], "--sections needs at least one of embeddings"),
        (["--search-sizes", "10000,1e6"], "--search-sizes takes vector counts of at least 100, got '1e6'"),
        (["--predict-sizes", "huge"], "unknown model size 'huge'"),
        (["--faiss-nprobe", "16,0"], "--faiss-nprobe takes numbers of inverted lists (>= 1), got '0'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_them(bench_script, capsys, argv, match):
    assert bench_script.main(argv) == 2  # before any measurement
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
    with pytest.raises(SystemExit) as stopped:
        bench_script.parse_args(argv)
    assert stopped.value.code == 2


def test_a_cuda_device_on_a_machine_without_one_exits_2(bench_script, capsys, monkeypatch):
    monkeypatch.setattr(bench_script.torch.cuda, "is_available", lambda: False)
    assert bench_script.main(["--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --device cuda was asked for but torch.cuda.is_available() is False; use --device cpu\n"


def test_list_flags_take_commas_or_spaces_and_quick_fills_the_rest(bench_script):
    def parse(*argv: str):
        return bench_script.parse_args(["--device", "cpu", "--train-sizes", "tiny", *argv])

    comma = parse("--sizes", "base,large", "--chip-sizes", "128,256", "--dtypes", "float32,float16")
    assert comma == parse("--sizes", "base", "large", "--chip-sizes", "128", "256", "--dtypes", "float32", "float16")
    assert comma.sizes == ["base", "large"] and comma.chip_sizes == [128, 256]
    assert comma.dtypes == ["float32", "float16"] and comma.train_sizes == ["tiny"] and str(comma.device) == "cpu"
    assert comma.train_chip_size == 128 and comma.min_time == 10.0 and comma.max_iters == 20 and not comma.quick
    quick = bench_script.parse_args(["--quick", "--device", "cpu"])
    assert (quick.sizes, quick.chip_sizes, quick.train_sizes, quick.batch_size) == (["tiny"], [32], ["tiny"], 2)
    assert (quick.train_chip_size, quick.min_time, quick.max_iters) == (32, 0.0, 1)
    assert quick.data_packages == ["bigearthnet-common"]


# ---------------------------------------------------------------------------------------------- FLOP reference
# The hand-written formulas the script used before it counted with FlopCounterMode, kept as the reference the
# counts are checked against (a multiply-add is 2 FLOPs; LayerNorm, GELU, softmax and additions are not counted).


def transformer_flops(tokens: int, width: int, depth: int, heads: int, head_dim: int, mlp: int) -> dict[str, int]:
    """Forward FLOPs of ``depth`` pre-norm layers on ``tokens`` tokens: linear layers and attention."""
    inner = heads * head_dim
    linear = 2 * tokens * (width * 3 * inner + inner * width + 2 * width * mlp)  # qkv, out, fc1, fc2
    attention = 2 * 2 * tokens**2 * inner  # q @ k^T and weights @ v
    return {"linear": depth * linear, "attention": depth * attention}


def embedding_flops(config: ClayConfig, chip_px: int, bands: int) -> dict[str, int]:
    """Forward FLOPs per chip of ``ClayModel`` (no masking); the cached weight generator is excluded."""
    p = config.patch_size
    patches = (chip_px // p) ** 2
    counts = transformer_flops(
        1 + patches,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.head_dim,
        config.intermediate_size,
    )
    counts["patch_embedding"] = 2 * patches * bands * p * p * config.hidden_size
    counts["total"] = sum(counts.values())
    return counts


def weight_generator_flops(config: ClayConfig, bands: int, out_dim: int, bias_dim: int | None) -> int:
    """Forward FLOPs of one wavelength-conditioned weight generator (per call, not per chip)."""
    e, seq = config.wave_dim, config.num_latent_tokens + bands + 1
    flops = 2 * 2 * bands * e * e  # the residual block on the wave tokens
    flops += transformer_flops(seq, e, 1, 1, e, config.wave_intermediate_size)["linear"]
    flops += 2 * 2 * seq**2 * e  # attention of the generator layer
    flops += 2 * bands * e * out_dim + (2 * e * bias_dim if bias_dim else 0)
    return flops


def training_flops(config: ClayConfig, chip_px: int, bands: int, batch: int) -> int:
    """FLOPs per chip of one pre-training step: 3x the forward (encoder on the visible patches, decoder)."""
    p, d, dd = config.patch_size, config.hidden_size, config.decoder_hidden_size
    patches = (chip_px // p) ** 2
    visible = patches - int(config.mask_ratio * patches)
    forward = 2 * patches * bands * p * p * d  # patch embedding of every patch
    forward += sum(
        transformer_flops(
            1 + visible,
            d,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.head_dim,
            config.intermediate_size,
        ).values()
    )
    forward += 2 * (1 + visible) * d * dd if d != dd else 0  # enc_to_dec
    forward += sum(
        transformer_flops(
            1 + patches,
            dd,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_head_dim,
            config.decoder_intermediate_size,
        ).values()
    )
    forward += 2 * patches * dd * bands * p * p  # the dynamic pixel head
    forward += 2 * d * config.teacher_dim  # proj
    generators = weight_generator_flops(config, bands, p * p * d, d) + weight_generator_flops(
        config, bands, p * p * dd, None
    )
    return 3 * (forward + generators // batch)


def test_embedding_flops_of_base_at_128():
    config = ClayConfig.from_preset("base")
    counts = embedding_flops(config, chip_px=128, bands=10)
    tokens, d, mlp = 257, 768, 3072
    assert counts["linear"] == 12 * 2 * tokens * (3 * d * d + d * d + 2 * d * mlp)
    assert counts["attention"] == 12 * 4 * tokens**2 * d
    assert counts["patch_embedding"] == 2 * 256 * 10 * 8 * 8 * d
    assert counts["total"] == pytest.approx(46.34e9, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_counted_flops_agree_with_the_formulas(bench_script, attn_implementation):
    """FlopCounterMode on the real models against the hand-written formulas above.

    Forward: equal to the FLOP (tiny and base, 32 to 128 px). Both count exactly the matrix products (qkv, out, fc1, fc2, the patch embedding's
    matmul, q @ k^T and weights @ v), 2 per multiply-add; neither counts LayerNorm, GELU, softmax, the encodings
    or additions (FlopCounterMode has no formula for elementwise ops).
    Training: within 1%. The formula takes backward = 2x forward; the count knows better in three places: no input
    gradient for the pixels (the patch embedding's dX) nor for the wave encodings (the generators' first layer),
    which lowers it, and torch's sdpa backward formula counts 5 products (the scores are recomputed), 2.5x its
    forward, which raises it. Net today: tiny -0.6%, base -0.3% at 32 px (-0.07% at 128 px).
    """
    torch = bench_script.torch
    sensor = bench_script.clay_hf.get_sensor(bench_script.SENSOR)
    wavelengths = torch.tensor(sensor.wavelengths_um)
    for size in ("tiny", "base") if attn_implementation == "sdpa" else ("tiny",):  # eager: the bmm path, once
        config = ClayConfig.from_preset(size, attn_implementation=attn_implementation)
        torch.manual_seed(0)
        model = ClayModel(config).eval()
        for chip_px in (32, 64):
            counted = bench_script.embedding_flops(model, chip_px, wavelengths, sensor.gsd_m)
            assert counted == embedding_flops(config, chip_px, bands=10)["total"], (size, chip_px)
        generator_calls = bench_script.CallCounter(model.patch_embedding.weight_generator)
        bench_script.embedding_flops(model, 32, wavelengths, sensor.gsd_m)
        assert generator_calls.count == 0  # the counted forward used the cached weights, as inference does
        if attn_implementation == "eager":
            continue  # training attention is checked once, with the sdpa kernels and their backward formula
        model = ClayForPreTraining(config).train()
        before = [p.detach().clone() for p in model.parameters()]
        counted = bench_script.training_flops(model, 32, wavelengths, sensor.gsd_m, batch=2)
        assert counted == pytest.approx(training_flops(config, 32, bands=10, batch=2), rel=0.01), size
        assert all(p.grad is None for p in model.parameters())  # the count leaves no gradient behind
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_write_atomic_keeps_the_hand_written_tail(bench_script, tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"old table\n{bench_script.GENERATED_END}\n\nInterpretation by hand.\n")
    bench_script.write_atomic(path, "new table\n")
    assert path.read_text() == f"new table\n\n{bench_script.GENERATED_END}\n\nInterpretation by hand.\n"
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS.md"]  # no temporary file left behind


def test_peak_includes_the_prepacked_linear_and_none_turns_sections_off(bench_script):
    points = bench_script.measure_matmul_peak(
        bench_script.torch.device("cpu"), ["float32"], [64], window_s=0.01, windows=1, slow_call_s=10.0, when="start"
    )
    assert [p.layout for p in points] == ["x @ w.T", "a @ b", bench_script.PREPACKED]
    assert all(p.best > 0 for p in points)
    args = bench_script.parse_args(["--data-packages", "none", "--train-sizes", "none", "--no-prepacking"])
    assert args.data_packages == [] and args.train_sizes == [] and args.no_prepacking
    assert bench_script.run_data_cases(args, progress=None) == []


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--scene-px", "1001"], "--scene-px must be a multiple of 8 between 8 and 1920"),
        (
            ["--scene-px", "256", "--predict-window", "512"],
            "--predict-window must be a multiple of the patch size 8 and at most 256 px (--scene-px), got 512",
        ),
        (["--onnx-chip-size", "20"], "--onnx-chip-size must be a multiple of the patch size 8 and at most 1920 px"),
    ],
)
def test_scene_sizes_that_do_not_fit_exit_2(bench_script, capsys, argv, match):
    assert bench_script.main(["--device", "cpu", *argv]) == 2  # before any measurement
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err


def test_sections_choose_what_runs(bench_script, monkeypatch, capsys):
    """--sections search: the search rows only; no matmul peak, no model, data or training cases."""
    args = bench_script.parse_args(["--device", "cpu", "--sections", "search,onnx"])
    assert (args.sizes, args.train_sizes, args.data_packages) == ([], [], [])
    assert args.search_sizes == [10_000, 100_000, 1_000_000] and args.onnx_sizes == ["base"]
    assert args.faiss_nprobe == [16, 64]
    assert bench_script.section_cases(args) == 4

    def not_run(*args, **kwargs):
        raise AssertionError("the matmul peak is measured only with the embeddings or training sections")

    def search(args, progress):
        assert args.search_sizes == [1000]
        return [bench_script.SearchResult(1000, "faiss IVF32,SQfp16", 10, 1, 0.5, 2.0, 0.875, 2 * 1024 * 1000, 8)]

    monkeypatch.setattr(bench_script, "measure_matmul_peak", not_run)
    monkeypatch.setattr(bench_script, "run_search_cases", search)
    argv = ["--device", "cpu", "--sections", "search", "--search-sizes", "1000", "--allocator", "default"]
    assert bench_script.main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "## Scoring every embedding" in out
        and "| 1,000 | FAISS `IVF32,SQfp16` via `datasets` `add_faiss_index`, nprobe 8 |" in out
    )
    assert "| 20,000 | 2.000 | 2 | 0.875 |" in out  # embeddings scored/s = 1000 x 10 / 0.5
    for absent in ("## Matmul peak", "## ClayModel embeddings", "## Data pipeline", "## ClayForPreTraining", "Notes:"):
        assert absent not in out


def test_search_helpers(bench_script):
    np = bench_script.np
    vectors = bench_script.synthetic_embeddings(3000, 64, seed=0)
    assert vectors.dtype == np.float16 and vectors.shape == (3000, 64)
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert np.array_equal(vectors, bench_script.synthetic_embeddings(3000, 64, seed=0))
    queries = vectors[[5, 17, 2999]].astype(np.float32)
    found = bench_script.exact_top_k(vectors, queries, 10, chunk=1000)  # a running top-k over three chunks
    scores = queries @ vectors.astype(np.float32).T  # (3, N)
    brute = np.sort(scores, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(np.take_along_axis(scores, found, axis=1), brute, rtol=1e-6)
    assert found[:, 0].tolist() == [5, 17, 2999]  # each query's own vector first
    assert bench_script.recall_at_k(found[:, ::-1], found) == 1.0
    half = np.concatenate([found[:, :5], np.full((3, 5), -1)], axis=1)
    assert bench_script.recall_at_k(half, found) == 0.5
    assert bench_script.top_k_rows(np.array([0.1, 0.9, 0.5, 0.7]), 2).tolist() == [1, 3]
    assert bench_script.faiss_factory(1_000_000) == ("IVF1000,SQfp16", 40_000)
    assert bench_script.faiss_factory(10) == ("IVF3,SQfp16", 10)


def test_prediction_and_onnx_checks(bench_script):
    """Issue 14's stitching overhead and issue 15's onnxruntime speed are checks; the int8 verdict is reported."""

    def prediction(overlap: float, seconds: float):
        # 100 windows; the model alone runs 10 windows/s, so 10 s is its own time
        return bench_script.PredictionResult(
            "base", "random-init", 128, overlap, 11, 100, 1.6, 1.0, seconds, 9.0, 0.5, 0.5, 10.0, 12.0
        )

    lines = bench_script.prediction_checks([prediction(0.0, 30.0), prediction(0.25, 10.5), prediction(0.25, 12.0)])
    assert [ok for _, ok in lines] == [True, False]  # the 0% overlap row is not judged
    assert "stitching + IO add 5.0% over the segmentation model's own time per input pixel (need <= 10%)" in lines[0][0]
    assert bench_script.exit_status(lines, quick=False) == 1 and bench_script.exit_status(lines, quick=True) == 0

    def onnx(backend: str, chips_per_s: float, cosine: float = 1.0, top10: float = 1.0):
        return bench_script.OnnxResult("base", 128, backend, 16, 64, 64 / chips_per_s, 0.0, cosine, cosine, top10)

    eager, bf16 = onnx("eager float32", 4.0), onnx("eager bfloat16", 6.0)
    lines = bench_script.onnx_checks([eager, onnx("onnxruntime float32", 3.8), bf16])
    assert [ok for _, ok in lines] == [True] and "95% of the eager path's 4.00 (need >= 90%)" in lines[0][0]
    assert [ok for _, ok in bench_script.onnx_checks([eager, onnx("onnxruntime float32", 3.4)])] == [False]
    (verdict,) = bench_script.int8_verdicts([eager, bf16, onnx("onnxruntime int8 (dynamic)", 7.0, 0.995, 0.95)])
    assert "int8 is faster than eager bfloat16" in verdict and verdict.endswith(": offered here")
    (verdict,) = bench_script.int8_verdicts([eager, bf16, onnx("onnxruntime int8 (dynamic)", 7.0, 0.98, 0.95)])
    assert verdict.endswith(": not offered here")
