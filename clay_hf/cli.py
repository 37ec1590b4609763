"""The command line of every script: flags derived from settings dataclasses, one set of source options, and
one way to exit, report errors and log.

    @dataclasses.dataclass
    class Arguments:
        output: str = dataclasses.field(metadata={"help": "output folder"})
        batch_size: int = dataclasses.field(default=32, metadata={"help": "chips per batch"})

    def work(args: Arguments, source: cli.SourceOptions) -> int:
        ...  # the script's job; raises clay_hf errors, returns 0 (or 1 for "done, but nothing came of it")

    def main(argv: list[str] | None = None) -> int:
        parser = cli.ArgumentParser([Arguments, cli.SourceOptions], description="...", examples=EXAMPLES)
        return cli.run(parser, work, argv, outputs=lambda args, source: [args.output])

The conventions, the same in every script:

* **Flags.** :class:`ArgumentParser` (transformers' ``HfArgumentParser``) turns every field of the dataclasses
  into a dashed flag (``max_steps`` -> ``--max-steps``) with the field's type, default and ``help`` metadata;
  ``Literal`` types and a ``choices`` metadata give choices, ``list``/``tuple`` fields take several values, a
  ``bool`` field is a switch. Metadata ``aliases`` adds spellings (the first is the one ``--help`` and error
  messages show), ``positional`` makes the field a positional argument (with ``nargs``/``metavar``), and
  ``library_name`` names the library argument the flag feeds, so an error saying ``max_nodata_fraction=`` names
  ``--max-nodata``. ``--verbose`` (:class:`ScriptOptions`) is added to every script.
* **Exit codes.** 0: done. 2: the command is wrong: argparse's errors, settings a dataclass refuses in its
  ``__post_init__`` (before any work), and the library errors that say the arguments are wrong before work
  starts (:data:`USAGE_ERRORS`: an invalid setting, an unknown sensor, a chip size that does not fit, an output
  folder the command may not use). 1: the work failed (a bad file, an output folder another run is writing to,
  no chips...).
* **Errors.** One line ``error: ...`` on stderr, with the Python argument names of library messages written as
  the script's flags (:func:`clay_hf.errors.for_cli`); no traceback for clay_hf errors and ``OSError``.
* **Logging.** Warnings and errors always; INFO lines of the libraries (GDAL/rasterio, transformers, the
  allocator tuning, clay_hf's modules) only with ``--verbose``. Progress bars and summaries are the script's.
* **Output folders.** A failed run removes each output folder it created (and the parents it created) when it
  holds nothing but lock files (and the script's ``scratch_files``, such as a settings record written before any
  result); a folder that existed before the run is never removed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from transformers.hf_argparser import HfArgumentParser

from .errors import (
    ChipSizeError,
    ClayConfigError,
    ClayError,
    IncompatibleBuildError,
    OutputExistsError,
    UnknownSensorError,
    for_cli,
)
from .geodata.chip_format import DEFAULT_MAX_NODATA

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "USAGE_ERRORS",
    "ArgumentParser",
    "ScriptOptions",
    "SourceOptions",
    "check_band_counts",
    "configure_logging",
    "report_error",
    "run",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Library errors that mean "the command is wrong", raised by the library's checks of its arguments before it
#: starts the work: an invalid setting, an unknown sensor name, a chip size that is not a multiple of the patch
#: size or fits no raster, an output folder that holds something else (another run, another model, another build,
#: files of the user). Every other error of a run is failed work (exit 1).
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    ClayConfigError,
    UnknownSensorError,
    ChipSizeError,
    OutputExistsError,
    IncompatibleBuildError,
)

# The lock files clay_hf.locking leaves in an output folder (".lock", ".lock-rank3"); their ".json" holder
# records exist only while a run holds the lock.
_LOCK_FILE = re.compile(r"\.lock(-rank\d+)?")


# --------------------------------------------------------------------------------------------------
# flags from dataclasses
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScriptOptions:
    """What every script takes besides its settings (added by :class:`ArgumentParser`)."""

    verbose: bool = dataclasses.field(
        default=False, metadata={"help": "also log INFO lines of the libraries (GDAL, transformers, clay_hf...)"}
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and examples as written; each option's default after its help (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.required
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
            or "default:" in text
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class ArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` with the scripts' conventions (see the module docstring).

    Args:
        dataclass_types: the settings dataclasses, in the order :meth:`parse` returns them. :class:`ScriptOptions`
            (``--verbose``) is added last.
        description: the first line of ``--help``.
        examples: the epilog, shown as written (``examples:`` and commands).

    Differences from ``HfArgumentParser``: flags are dashed only (``--max-steps``, not also ``--max_steps``), a
    ``bool`` field is a plain switch (``--resume``, no optional value that could swallow a positional argument),
    ``tuple[float, float]`` fields take that many values, ``list[Literal[...]]`` fields take several choices,
    ``%`` in help texts is literal, and argument errors are one line.
    """

    def __init__(self, dataclass_types: Iterable[type], description: str = "", examples: str = "", **kwargs: Any):
        self.flags: dict[str, str] = {}  # Python argument name -> the flag to name in messages
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__([*dataclass_types, ScriptOptions], description=description, epilog=examples or None, **kwargs)

    def _parse_dataclass_field(self, parser: argparse._ActionsContainer, field: dataclasses.Field) -> None:
        metadata = dict(field.metadata)
        aliases = metadata.pop("aliases", [])
        aliases = [aliases] if isinstance(aliases, str) else list(aliases)
        positional = metadata.pop("positional", False)
        library_name = metadata.pop("library_name", None)
        kwargs: dict[str, Any] = dict(metadata)
        if kwargs.get("help"):
            kwargs["help"] = kwargs["help"].replace("%", "%%")  # argparse formats help with %
        hint = _without_none(field.type)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            kwargs["action"] = "store_false" if field.default is True else "store_true"
        elif origin is tuple:
            kwargs.setdefault("nargs", "+" if Ellipsis in args else len(args))
            kwargs["type"] = args[0]
            kwargs["action"] = _StoreTuple
        elif origin is list:
            kwargs.setdefault("nargs", "+")
            kwargs.update(_value_type(args[0] if args else str))
        else:
            kwargs.update(_value_type(hint))
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        elif not positional:
            kwargs["required"] = True
        if positional:
            parser.add_argument(field.name, **kwargs)
            return
        dashed = "--" + field.name.replace("_", "-")
        if hint is bool and field.default is True:  # a switch that turns a default-on setting off
            dashed = "--no-" + field.name.replace("_", "-")
        names = [*aliases, dashed]
        if aliases and "metavar" not in kwargs and kwargs.get("action") is None:
            kwargs["metavar"] = names[0].lstrip("-").replace("-", "_").upper()  # --output OUTPUT, not OUTPUT_DIR
        parser.add_argument(*dict.fromkeys(names), dest=field.name, **kwargs)
        if names[0] != "--" + field.name.replace("_", "-"):
            self.flags[field.name] = names[0]
        if library_name:
            self.flags[library_name] = names[0]

    def error(self, message: str) -> typing.NoReturn:
        """An argument error: one line on stderr, exit status 2."""
        self.exit(EXIT_USAGE, f"error: {_one_line(message)} (see {self.prog} --help)\n")

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """The dataclasses of ``argv`` (default ``sys.argv[1:]``), :class:`ScriptOptions` last.

        Exits with status 2 (one ``error:`` line) on a bad flag or a value a dataclass refuses; ``--help`` exits 0.
        """
        args = None if argv is None else list(argv)
        try:
            *settings, unknown = self.parse_args_into_dataclasses(
                args=args, return_remaining_strings=True, look_for_args_file=False
            )
        except (ClayError, ValueError) as err:  # a dataclass's __post_init__ refused a value
            self.error(for_cli(err, self.flags))
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return tuple(settings)


class _StoreTuple(argparse.Action):
    """Several values as the tuple the field is typed as (argparse gives a list)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, tuple(values))


def _without_none(hint: Any) -> Any:
    """``X`` of ``X | None`` (``Optional[X]``); other types as they are."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a settings field needs one type (or that type | None), got {hint}")
        return args[0]
    return hint


def _value_type(hint: Any) -> dict[str, Any]:
    """argparse's ``type`` (and ``choices``) for one value of type ``hint``."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return {"type": type(choices[0]), "choices": choices}
    return {"type": hint}


# --------------------------------------------------------------------------------------------------
# source options
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SourceOptions:
    """The options of every script that reads imagery: what a source is, where its files do not say it.

    :meth:`open_kwargs` gives them as the library's source fields (``sensor``, ``band_names``, ``datetime``,
    ``wavelengths_um``, ``mean``, ``std``, ``offset_dn``, ``harmonize_offset``:
    :class:`clay_hf.geodata.sources.SourceSpec`, ``open_source``,
    ``embed_to_parquet``); ``max_nodata`` is the chip filter, defaulting to
    :data:`clay_hf.geodata.chip_format.DEFAULT_MAX_NODATA` everywhere.
    """

    sensor: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "sensor-table name of the imagery (e.g. sentinel-2-l2a, landsat-c2l2-sr) where its files or "
            "STAC item do not say it"
        },
    )
    band_names: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "a name per band, in file order (sensor-table names or aliases: B02, nir08)"}
    )
    wavelengths: list[float] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "band centres in micrometres, in file order (imagery of a sensor not in the table)",
            "library_name": "wavelengths_um",
        },
    )
    mean: list[float] | None = dataclasses.field(
        default=None, metadata={"help": "per-band mean of the pixel values, for normalisation (with --wavelengths)"}
    )
    std: list[float] | None = dataclasses.field(
        default=None, metadata={"help": "per-band standard deviation of the pixel values (with --wavelengths)"}
    )
    datetime: str | None = dataclasses.field(
        default=None, metadata={"help": "acquisition time, ISO 8601 (e.g. 2023-06-01T10:30), where the files lack it"}
    )
    offset_dn: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "radiometric offset (DN) the files' values carry, where their metadata do not say it (Sentinel-2 "
            "from processing baseline 04.00: 1000; 0 for an archive that already removed it)"
        },
    )
    harmonize_offset: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "keep the Sentinel-2 +1000 DN offset in the values instead of removing it (by default it is "
            "removed: the Clay v1.5 normalisation was computed without it)"
        },
    )
    max_nodata: float = dataclasses.field(
        default=DEFAULT_MAX_NODATA,
        metadata={
            "help": "leave out chips with a larger fraction of nodata pixels",
            "library_name": "max_nodata_fraction",
        },
    )

    def __post_init__(self) -> None:
        from .encodings import parse_datetime  # the library's own checks, so a mistake exits 2 before any work
        from .sensors import get_sensor

        if self.sensor is not None:
            get_sensor(self.sensor)  # an unknown name raises with a did-you-mean
        if self.datetime is not None:
            try:
                parse_datetime(self.datetime)
            except ClayError as err:
                raise ClayConfigError(f"--datetime: {err}") from None
        check_band_counts(self.band_names, self.wavelengths, self.mean, self.std)
        if self.offset_dn is not None and not (math.isfinite(self.offset_dn) and self.offset_dn >= 0):
            raise ClayConfigError(f"--offset-dn must be a number of digital numbers >= 0, got {self.offset_dn}")
        if not 0.0 <= self.max_nodata <= 1.0:
            raise ClayConfigError(f"--max-nodata must be a fraction from 0 to 1, got {self.max_nodata}")

    def open_kwargs(self) -> dict[str, Any]:
        """The source fields that were given, as the library names them (``wavelengths`` -> ``wavelengths_um``)."""
        fields = {
            "sensor": self.sensor,
            "band_names": self.band_names,
            "datetime": self.datetime,
            "wavelengths_um": self.wavelengths,
            "mean": self.mean,
            "std": self.std,
        }
        if self.offset_dn is not None:
            fields["offset_dn"] = self.offset_dn
        if not self.harmonize_offset:
            fields["harmonize_offset"] = False
        return {name: value for name, value in fields.items() if value is not None}


# --------------------------------------------------------------------------------------------------
# running a script
# --------------------------------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (a redirected or captured one), not the one at creation."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def check_band_counts(band_names=None, wavelengths=None, mean=None, std=None) -> None:
    """One value per band in each of ``--band-names``, ``--wavelengths``, ``--mean``, ``--std`` that was given,
    checked before any work (``ClayConfigError``: exit 2)."""
    from .errors import ClayConfigError

    given = {"--band-names": band_names, "--wavelengths": wavelengths, "--mean": mean, "--std": std}
    counts = {flag: len(values) for flag, values in given.items() if values is not None}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n} values in {flag}" for flag, n in counts.items())
        raise ClayConfigError(f"one value per band is needed in each of {', '.join(counts)}; got {listed}")


def configure_logging(verbose: bool = False) -> None:
    """Warnings and errors of every logger on stderr; INFO lines too with ``verbose``.

    A handler is added only when the process has none on the root logger (an application or test runner that
    configured logging keeps its handlers). transformers, which logs through its own handler, follows
    ``verbose`` as well.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    if verbose:
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"  # read when transformers sets up its logger
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity_info()


def report_error(error: BaseException, flags: dict[str, str] | None = None) -> int:
    """Print ``error`` as one ``error: ...`` line on stderr (argument names as flags); its exit status."""
    print(f"error: {_one_line(for_cli(error, flags))}", file=sys.stderr)
    return EXIT_USAGE if isinstance(error, USAGE_ERRORS) else EXIT_FAILED


def run(
    parser: ArgumentParser,
    work: Callable[..., int | None],
    argv: Sequence[str] | None = None,
    outputs: Callable[..., Iterable[str | os.PathLike | None]] | None = None,
    scratch_files: Iterable[str] = (),
) -> int:
    """Parse ``argv``, set up logging, call ``work(*settings)`` and return the exit status (module docstring).

    Args:
        parser: the script's parser; its dataclasses (without :class:`ScriptOptions`) are passed to ``work``.
        work: the script's job; returns 0 (or None) when done, or 1, and raises clay_hf errors.
        outputs: given the settings, the output folders the run may create: on failure those it created and
            that hold nothing but lock files are removed.
        scratch_files: names of files the work writes into an output folder before any result (a record of its
            settings): a folder the failed run created that holds only these and lock files is removed too.

    ``--help`` raises ``SystemExit(0)`` as argparse does; every other outcome is returned.
    """
    try:
        *settings, options = parser.parse(argv)
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        return int(stop.code) if isinstance(stop.code, int) else EXIT_USAGE
    configure_logging(options.verbose)
    import clay_hf

    clay_hf.register_auto_classes()  # what `import clay_hf` does, deferred by the scripts (CLAY_HF_LAZY_IMPORT)
    created = _created_folders(outputs(*settings) if outputs is not None else ())
    code = EXIT_FAILED
    try:
        code = work(*settings) or EXIT_OK
    except (ClayError, OSError) as err:
        code = report_error(err, parser.flags)
    finally:
        if code != EXIT_OK:
            for folder in created:
                _remove_if_empty(folder, frozenset(scratch_files))
    return code


def _release(lock) -> None:
    with contextlib.suppress(OSError):
        lock.release()


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _created_folders(paths: Iterable[str | os.PathLike | None]) -> list[Path]:
    """For each path that does not exist yet, the topmost of its missing folders (what ``mkdir -p`` creates)."""
    created = []
    for path in paths:
        if path is None or "://" in os.fspath(path):
            continue
        folder = Path(path).absolute()
        if folder.exists():
            continue
        while not folder.parent.exists():
            folder = folder.parent
        created.append(folder)
    return created


def _remove_if_empty(folder: Path, scratch_files: frozenset[str]) -> None:
    """Remove ``folder`` if it holds nothing but folders, ``scratch_files`` and free lock files (lock files no live
    process holds: another process's run may be using a folder this one created)."""
    if not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if any(not _LOCK_FILE.fullmatch(p.name) and p.name not in scratch_files for p in files):
        return
    files = [p for p in files if _LOCK_FILE.fullmatch(p.name)]
    import filelock

    with contextlib.ExitStack() as held:
        for path in files:  # a lock another process holds means its run is using the folder
            lock = filelock.FileLock(str(path), timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                return
            held.callback(_release, lock)
        shutil.rmtree(folder, ignore_errors=True)
