"""clay_hf.cli: flags from dataclasses, the shared source options, exit codes, one-line errors, output folders
and logging, the same for every script."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest

from clay_hf import cli
from clay_hf.errors import OutputExistsError, OutputLockedError, RasterError
from clay_hf.geodata.chip_format import DEFAULT_MAX_NODATA
from clay_hf.locking import output_lock

from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "train",
    "prepare_chips",
    "embed",
    "convert_clay_checkpoint",
    "fetch_sample_data",
    "run_pipeline",
    "evaluate",
    "push_to_hub",
    "benchmark",
    "finetune",
    "predict",
    "export",
]
# Scripts whose settings are their own: --help and argument errors import neither torch nor transformers' models.
LIGHT_SCRIPTS = ["benchmark", "evaluate", "fetch_sample_data", "push_to_hub"]


@dataclasses.dataclass(kw_only=True)
class Settings:
    inputs: list[str] = dataclasses.field(
        default_factory=list, metadata={"positional": True, "nargs": "*", "metavar": "SOURCE", "help": "inputs"}
    )
    output_dir: str = dataclasses.field(metadata={"help": "where it goes", "aliases": ["--output"]})
    max_steps: int = dataclasses.field(default=8, metadata={"help": "steps, 5% of them warm-up"})
    warmup: int | None = dataclasses.field(default=None, metadata={"help": "warm-up steps"})
    betas: tuple[float, float] = dataclasses.field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    weights: list[float] | None = dataclasses.field(default=None, metadata={"help": "one per band"})
    dtype: Literal["float32", "bfloat16"] = dataclasses.field(default="float32", metadata={"help": "dtype"})
    outputs: list[Literal["cls", "mean"]] = dataclasses.field(default_factory=lambda: ["cls"], metadata={"help": "o"})
    precision: str = dataclasses.field(default="no", metadata={"help": "autocast", "choices": ("no", "bf16")})
    resume: bool = dataclasses.field(default=False, metadata={"help": "continue"})
    workers: int = dataclasses.field(default=1, metadata={"help": "processes", "library_name": "num_workers"})

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps= must be at least 1, got {self.max_steps}")


def _parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([Settings, cli.SourceOptions], description="A test script.", examples="examples:\n  x")


def test_flags_types_and_defaults_come_from_the_dataclass_fields():
    settings, source, options = _parser().parse(
        ["a.tif", "b.tif", "--output", "out", "--max-steps", "3", "--betas", "0.8", "0.9", "--weights", "1", "2",
         "--dtype", "bfloat16", "--outputs", "cls", "mean", "--resume", "--precision", "bf16"]
    )  # fmt: skip
    assert settings == Settings(
        inputs=["a.tif", "b.tif"], output_dir="out", max_steps=3, betas=(0.8, 0.9), weights=[1.0, 2.0],
        dtype="bfloat16", outputs=["cls", "mean"], precision="bf16", resume=True,
    )  # fmt: skip
    assert isinstance(settings.betas, tuple) and source == cli.SourceOptions() and options.verbose is False
    defaults, _, _ = _parser().parse(["--output-dir", "out"])  # the field's dashed name works beside the alias
    assert defaults == Settings(output_dir="out") and defaults.warmup is None and defaults.outputs == ["cls"]
    # a switch takes no value, so a positional argument after it stays one
    assert _parser().parse(["--output", "o", "--resume", "c.tif"])[0].inputs == ["c.tif"]


def test_help_shows_dashed_flags_defaults_aliases_and_examples(capsys):
    with pytest.raises(SystemExit) as stopped:
        _parser().parse(["--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-steps MAX_STEPS steps, 5% of them warm-up (default: 8)" in text  # % is literal
    assert "--max_steps" not in text and "--output OUTPUT, --output-dir OUTPUT" in text
    assert "--betas BETAS BETAS AdamW betas (default: 0.9 0.95)" in text
    assert "--dtype {float32,bfloat16}" in text and "--precision {no,bf16}" in text
    assert "--resume continue --workers" in text  # no "(default: False)" after a switch
    assert f"(default: {DEFAULT_MAX_NODATA})" in text and "--verbose" in text  # the shared options
    assert text.endswith("examples: x")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--output", "o", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: --output"),
        (["--output", "o", "--dtype", "float64"], "invalid choice: 'float64'"),
        (["--output", "o", "--max-steps", "many"], "invalid int value: 'many'"),
        (["--output", "o", "--max-steps", "0"], "--max-steps must be at least 1, got 0"),  # __post_init__, as a flag
        (["--output", "o", "--sensor", "sentinal-2"], "unknown sensor 'sentinal-2'; did you mean 'sentinel-2-l2a'"),
        (["--output", "o", "--datetime", "yesterday"], "--datetime: cannot read 'yesterday' as a date"),
        (
            ["--output", "o", "--wavelengths", "0.5", "0.6", "--mean", "1"],
            "2 values in --wavelengths, 1 values in --mean",
        ),
        (["--output", "o", "--max-nodata", "1.5"], "--max-nodata must be a fraction from 0 to 1, got 1.5"),
    ],
)
def test_usage_errors_exit_2_with_one_error_line_before_any_work(argv, words, capsys):
    called = []
    assert cli.run(_parser(), lambda *settings: called.append(settings), argv) == cli.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert "(see " in err and "--help)" in err and called == []


def test_source_options_are_the_librarys_open_kwargs():
    _, source, _ = _parser().parse(
        ["--output", "o", "--sensor", "landsat-c2l2-sr", "--band-names", "red", "nir08", "--wavelengths", "0.65",
         "0.86", "--mean", "10", "20", "--std", "1", "2", "--datetime", "2021-06-01"]
    )  # fmt: skip
    assert source.open_kwargs() == {
        "sensor": "landsat-c2l2-sr", "band_names": ["red", "nir08"], "datetime": "2021-06-01",
        "wavelengths_um": [0.65, 0.86], "mean": [10.0, 20.0], "std": [1.0, 2.0],
    }  # fmt: skip
    assert source.max_nodata == DEFAULT_MAX_NODATA == 0.25
    assert cli.SourceOptions().open_kwargs() == {}  # nothing given: the files and the library decide


def test_failed_work_exits_1_and_usage_errors_from_the_library_exit_2_naming_flags(capsys):
    parser = _parser()

    def fails(error):
        def work(settings, source):
            raise error

        return work

    bad = RasterError("raster 'x.tif' has 3 bands; pass band_names= or wavelengths_um=, and fewer num_workers=")
    assert cli.run(parser, fails(bad), ["--output", "o"]) == cli.EXIT_FAILED == 1
    err = capsys.readouterr().err
    assert err == "error: raster 'x.tif' has 3 bands; pass --band-names or --wavelengths, and fewer --workers\n"
    taken = OutputExistsError("out holds another run\nof another model; pass --overwrite, or another output_dir=")
    assert cli.run(parser, fails(taken), ["--output", "o"]) == 2  # the command must change: exit 2, one line
    assert (
        capsys.readouterr().err
        == "error: out holds another run of another model; pass --overwrite, or another --output\n"
    )
    locked = OutputLockedError("another chip build is writing to out (pid 1); wait for it to finish")
    assert cli.run(parser, fails(locked), ["--output", "o"]) == 1  # the command is right; try again later
    assert cli.run(parser, fails(PermissionError(13, "Permission denied", "o/x")), ["--output", "o"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: [Errno 13] Permission denied: 'o/x'"
    with pytest.raises(ZeroDivisionError):  # a bug is not a user's mistake: it keeps its traceback
        cli.run(parser, fails(ZeroDivisionError("bug")), ["--output", "o"])
    assert cli.run(parser, lambda settings, source: None, ["--output", "o"]) == 0
    assert cli.run(parser, lambda settings, source: 1, ["--output", "o"]) == 1  # done, but nothing came of it


def test_a_failed_run_removes_the_output_folders_it_created_when_they_hold_only_locks(tmp_path):
    import filelock

    parser = _parser()

    def locked_then_fails(folder: Path, result: str | None = None, keep_lock: list | None = None):
        def work(settings, source):
            with output_lock(folder, job="test run", rank=1):  # a real lock (.lock-rank1 and its .json record)
                (folder / "data" / "train").mkdir(parents=True)
                if result is not None:
                    (folder / "data" / "train" / result).write_text("rows")
                if keep_lock is not None:  # as another live process holding the folder's lock
                    keep_lock.append(filelock.FileLock(str(folder / ".lock"), timeout=0))
                    keep_lock[-1].acquire()
                raise RasterError("raster 'x.tif' is corrupt or truncated")

        return work

    created = tmp_path / "new" / "nested" / "out"
    outputs = lambda settings, source: [settings.output_dir]  # noqa: E731
    assert cli.run(parser, locked_then_fails(created), ["--output", str(created)], outputs=outputs) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the folder and the parents it created are gone

    existed = tmp_path / "existed"
    existed.mkdir()
    assert cli.run(parser, locked_then_fails(existed), ["--output", str(existed)], outputs=outputs) == 1
    assert existed.is_dir()  # a folder that was there before is never removed

    with_result = tmp_path / "with-result"
    assert cli.run(parser, locked_then_fails(with_result, "a-00000.parquet"), ["--output", str(with_result)],
                   outputs=outputs) == 1  # fmt: skip
    assert (with_result / "data" / "train" / "a-00000.parquet").is_file()  # what the run made stays (resume)

    held, holders = tmp_path / "held", []
    assert cli.run(parser, locked_then_fails(held, keep_lock=holders), ["--output", str(held)], outputs=outputs) == 1
    assert (held / ".lock").is_file()  # another process's run uses it
    holders[0].release()

    record = tmp_path / "record"

    def writes_a_record_then_fails(settings, source):
        with output_lock(record):
            (record / "settings.json").write_text("{}")
            raise OutputExistsError("refused")

    assert cli.run(parser, writes_a_record_then_fails, ["--output", str(record)], outputs=outputs,
                   scratch_files=["settings.json"]) == 2  # fmt: skip
    assert not record.exists()  # a settings record is no result

    done = tmp_path / "done"
    assert cli.run(parser, lambda s, o: done.mkdir(), ["--output", str(done)], outputs=outputs) == 0
    assert done.is_dir()  # success keeps even an empty folder


def test_info_lines_of_libraries_only_with_verbose(tmp_path):
    """In a fresh interpreter (logging not configured by anyone): a run without --verbose shows the library's
    warning and not its INFO lines, a run with --verbose both."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import dataclasses, logging, sys
            from clay_hf import cli

            @dataclasses.dataclass
            class Nothing:
                pass

            def work(_):
                for name in ("clay_hf.geodata.raster", "rasterio._env", "clay_hf.runtime"):
                    logging.getLogger(name).info("%s says hello", name)
                logging.getLogger("clay_hf.geodata.builder").warning("a warning")
                print("summary line")

            parser = cli.ArgumentParser([Nothing])
            print("quiet", file=sys.stderr)
            cli.run(parser, work, [])
            print("verbose", file=sys.stderr)
            cli.run(parser, work, ["--verbose"])
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["summary line", "summary line"]
    quiet, verbose = proc.stderr.split("verbose\n")
    assert "WARNING clay_hf.geodata.builder: a warning" in quiet and "says hello" not in quiet
    for name in ("clay_hf.geodata.raster", "rasterio._env", "clay_hf.runtime"):
        assert f"INFO {name}: {name} says hello" in verbose
    assert "WARNING clay_hf.geodata.builder: a warning" in verbose


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_the_shared_conventions(name, capsys):
    script = load_script(ROOT / "scripts" / f"{name}.py")
    with pytest.raises(SystemExit) as stopped:
        script.main(["--help"])
    assert stopped.value.code == 0
    options, examples = capsys.readouterr().out.split("examples:")
    assert "--verbose" in options and examples.strip()
    assert not [word for word in options.split() if word.startswith("--") and "_" in word]  # dashed flags only
    assert script.main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and err.endswith(" --help)\n")


@pytest.mark.parametrize("name", LIGHT_SCRIPTS)
def test_help_of_the_light_scripts_imports_no_torch(name):
    """``--help`` is instant: the scripts import clay_hf lazily (CLAY_HF_LAZY_IMPORT) and register at work start."""
    probe = (
        f"import runpy, sys\nsys.argv = [{name!r}, '--help']\n"
        f"try:\n    runpy.run_path({str(ROOT / 'scripts' / (name + '.py'))!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n    assert stop.code == 0, stop.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers.modeling_utils') if m in sys.modules)\n"
        "assert not heavy, heavy\nimport os\nassert 'CLAY_HF_LAZY_IMPORT' not in os.environ\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "examples:" in proc.stdout


def test_the_scripts_copies_of_library_names_agree_with_the_library():
    """The light scripts name presets and sample packages without importing the modules that define them."""
    from clay_hf.configuration_clay import CLAY_PRESETS
    from clay_hf.geodata.sample_data import SAMPLE_PACKAGES

    for name in ("benchmark", "evaluate"):
        assert load_script(ROOT / "scripts" / f"{name}.py").PRESETS == tuple(CLAY_PRESETS)
    assert load_script(ROOT / "scripts" / "fetch_sample_data.py").PACKAGES == tuple(SAMPLE_PACKAGES)


def test_lazy_import_defers_the_core_and_run_registers_it():
    """``import clay_hf`` registers the Auto classes; with CLAY_HF_LAZY_IMPORT=1 nothing heavy loads until
    used, and ``cli.run`` registers before the work (so a script's work finds Clay folders through AutoModel)."""
    probe = textwrap.dedent(
        """
        import dataclasses, sys
        import clay_hf
        from clay_hf import cli
        assert "torch" not in sys.modules and "transformers.models.auto.modeling_auto" not in sys.modules

        @dataclasses.dataclass
        class Nothing:
            pass

        def work(_):
            from transformers import AutoConfig, CONFIG_MAPPING
            assert CONFIG_MAPPING["clay"] is clay_hf.ClayConfig
            return 0

        parser = cli.ArgumentParser([Nothing], description="probe", examples="examples: probe")
        assert cli.run(parser, work, []) == 0
        assert clay_hf.ClayModel.__name__ == "ClayModel" and issubclass(clay_hf.ClayInputError, ValueError)
        """
    )
    env = {**__import__("os").environ, "CLAY_HF_LAZY_IMPORT": "1"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
