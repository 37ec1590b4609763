#!/usr/bin/env python
"""Convert an original Clay (PyTorch Lightning) checkpoint into a Hugging Face model folder.

The folder holds safetensors weights, ``config.json`` with an ``auto_map``, the remote code and
``preprocessor_config.json``; it loads with ``AutoModel`` (the encoder, for embeddings) and
``AutoModelForPreTraining`` (encoder + MAE decoder + teacher projection).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="original Clay .ckpt file")
    parser.add_argument(
        "--output", required=True, type=Path,
        help="folder to write; an existing Clay model folder is replaced atomically, any other needs --overwrite",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output even if it holds other files (never . or a parent)"
    )
    parser.add_argument(
        "--verify", action="store_true", help="reload the folder with AutoModel and report loading info"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from clay_hf.conversion import convert_checkpoint
    from clay_hf.errors import ClayError

    try:
        out = convert_checkpoint(args.checkpoint, args.output, overwrite=args.overwrite)
    except ClayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
