"""scripts/benchmark.py: the quick mode produces the report; FLOP counts and the atomic write.

No timing is asserted here: speed is a property of the machine, checked by reading BENCHMARKS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clay_hf import ClayConfig

from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench_script():
    return load_script(SCRIPT)


@pytest.mark.slow
def test_quick_run_writes_the_table(tmp_path):
    output = tmp_path / "bench.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--sizes", "tiny", "--chip-sizes", "32",
         "--train-sizes", "tiny", "--output", str(output)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = output.read_text()
    assert report == result.stdout.rstrip("\n") + "\n"
    for heading in ("## Matmul peak", "## ClayModel embeddings", "## ClayForPreTraining step", "## Checks",
                    "## Data pipeline"):  # fmt: skip
        assert heading in report
    assert "| build (read windows, tile, write Parquet) | 108 |" in report  # BigEarthNet: 12 patches x 9 chips
    assert "| stream (read, decode, normalise, batch) | 108 |" in report
    assert "what a tiny training step at 32 px consumes" in report
    rows = [line for line in report.splitlines() if line.startswith("| tiny | 32 |")]
    assert len(rows) == 3  # float32 and bfloat16 embeddings, one training step
    assert "| chips/s |" in report and "peak MiB" in report and "packed MiB" in report
    assert "| float32 | `ClayLinear, prepacked` |" in report  # the model's own kernel is part of the peak
    assert "SKIP  float32 base@128" in report  # the reference case is not part of a quick run


def test_help_has_examples(bench_script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_script.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--sizes", "huge"], "unknown model size 'huge'"),
        (["--dtypes", "float64"], "unknown dtype 'float64'"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
    ],
)
def test_bad_arguments_are_named(bench_script, capsys, argv, match):
    with pytest.raises(SystemExit):
        bench_script.parse_args(argv)
    assert match in capsys.readouterr().err


def test_embedding_flops_of_base_at_128(bench_script):
    config = ClayConfig.from_preset("base")
    counts = bench_script.embedding_flops(config, chip_px=128, bands=10)
    tokens, d, mlp = 257, 768, 3072
    assert counts["linear"] == 12 * 2 * tokens * (3 * d * d + d * d + 2 * d * mlp)
    assert counts["attention"] == 12 * 4 * tokens**2 * d
    assert counts["patch_embedding"] == 2 * 256 * 10 * 8 * 8 * d
    assert counts["total"] == pytest.approx(46.34e9, rel=1e-3)


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
