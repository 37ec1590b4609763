#!/usr/bin/env python
"""Convert an original Clay (PyTorch Lightning) checkpoint into a Hugging Face model folder.

The folder holds safetensors weights, ``config.json`` with an ``auto_map``, the remote code and
``preprocessor_config.json``; it loads with ``AutoModel`` (the encoder, for embeddings) and
``AutoModelForPreTraining`` (encoder + MAE decoder + teacher projection).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clay_hf import cli  # noqa: E402

EXAMPLES = """examples:
  # the Clay v1.5 release (model_size: large; its model.teacher.* tensors are skipped)
  python scripts/convert_clay_checkpoint.py --checkpoint clay-v1.5.ckpt --output models/clay-v1.5

  # the small parity checkpoint that ships with the tests
  python scripts/convert_clay_checkpoint.py --checkpoint tests/fixtures/clay-micro-original.ckpt --output /tmp/clay-micro

  # into a folder that already holds other files (they are deleted)
  python scripts/convert_clay_checkpoint.py --checkpoint clay-v1.5.ckpt --output models/scratch --overwrite

then:
  python -c "import clay_hf, transformers; print(transformers.AutoModel.from_pretrained('models/clay-v1.5'))"
"""


@dataclasses.dataclass(kw_only=True)
class ConvertArguments:
    """The conversion (``clay_hf.conversion.convert_checkpoint``)."""

    checkpoint: Path = dataclasses.field(metadata={"help": "original Clay .ckpt file"})
    output: Path = dataclasses.field(
        metadata={
            "help": "folder to write; an existing Clay model folder is replaced atomically, any other needs "
            "--overwrite",
            "library_name": "output_dir",
        }
    )
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "replace --output even if it holds other files (never . or a parent)"}
    )
    verify: bool = dataclasses.field(
        default=False, metadata={"help": "reload the folder with AutoModel and report loading info"}
    )


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([ConvertArguments], description=__doc__.splitlines()[0], examples=EXAMPLES)


def parse_args(argv: list[str] | None = None) -> tuple[ConvertArguments, cli.ScriptOptions]:
    return build_parser().parse(argv)


def convert(args: ConvertArguments) -> int:
    from clay_hf.conversion import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.output, overwrite=args.overwrite)
    if args.verify:
        import transformers

        import clay_hf  # noqa: F401  (registers the Auto classes)

        for auto in (transformers.AutoModel, transformers.AutoModelForPreTraining):
            _, info = auto.from_pretrained(out, output_loading_info=True)
            problems = {k: v for k, v in info.items() if v}
            print(f"{auto.__name__}: {'ok' if not problems else problems}")
            if problems:
                return 1
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}: {files}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), convert, argv, outputs=lambda args: [args.output])


if __name__ == "__main__":
    sys.exit(main())
