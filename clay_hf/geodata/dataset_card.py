"""The dataset card of a chip build: the ``README.md`` the Hub shows, rendered from the build's manifest.

    >>> manifest = json.loads(Path("chips/manifest.json").read_text())
    >>> print(render_dataset_card(manifest, "chips"))

The card is a view of ``manifest.json`` (:func:`clay_hf.geodata.builder.write_dataset_card` writes both, from the
same dict, after every build), so it cannot count other chips than the manifest does. It holds:

- YAML metadata (``huggingface_hub.DatasetCardData``): the license, a pretty name, tags, and one ``configs``
  entry whose ``data_files`` map each split to ``data/<split>/*.parquet``: what ``datasets.load_dataset`` on the
  Hub, or on the local folder, loads by;
- the chip count and size, where the chip format is described (:mod:`clay_hf.geodata.chip_format`);
- per split: chips per sensor, dropped chips and skipped sources;
- a table of the sources (split, name, sensor, bands, chips, license), and the build settings.

The license is the Hub's lower-case id (``cc0-1.0``, ``cc-by-4.0``...) when every source carries the same known
one, ``other`` when they differ or one is not a Hub id, ``unknown`` when no source names one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["HUB_LICENSES", "hub_license", "render_dataset_card"]

# The source licenses the card names as they are; any other becomes "other".
HUB_LICENSES = frozenset({"cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "odbl", "apache-2.0", "mit", "other"})


def hub_license(licenses: Iterable[str | None]) -> str:
    """The card's ``license`` field for sources with these licenses (``None`` or ``""``: not named).

    The Hub's lower-case id when every source that names one names the same one of :data:`HUB_LICENSES`
    (any case), ``"other"`` when they differ or the one is not a Hub id, ``"unknown"`` when none names one.
    """
    known = {lic for lic in licenses if lic}
    if len(known) == 1 and next(iter(known)).lower() in HUB_LICENSES:
        return next(iter(known)).lower()
    return "other" if known else "unknown"


def render_dataset_card(manifest: Mapping[str, Any], name: str) -> str:
    """The ``README.md`` dataset card of a chip build, from its manifest.

    Args:
        manifest: the build's ``manifest.json`` as a dict (``settings`` and ``splits``, each split with
            ``num_chips``, ``chips_per_sensor``, ``dropped_chips``, ``skipped_sources`` and ``sources``), as
            :func:`clay_hf.geodata.builder.write_dataset_card` returns it.
        name: the dataset's name (the build folder's name): the card's title.
    """
    from huggingface_hub import DatasetCardData

    config = manifest.get("settings") or {}
    splits = manifest["splits"]
    sources = [s for split in splits.values() for s in split["sources"]]
    card = DatasetCardData(
        license=hub_license(s.get("license") for s in sources),
        pretty_name=f"{name} (Clay chips)",
        tags=["earth-observation", "remote-sensing", "satellite-imagery", "clay"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}/*.parquet"} for split in splits],
            }
        ],
    )
    rows = [
        f"| {split} | {s['name']} | {s['sensor'] or 'unknown'} | {', '.join(s['band_names'])} | "
        f"{s['num_chips']} | {s['license'] or 'unknown'} |"
        for split, info in splits.items()
        for s in info["sources"]
    ]
    total = sum(info["num_chips"] for info in splits.values())
    size = config.get("chip_size", "?")
    counts = [
        f"- {split}: chips per sensor {json.dumps(info['chips_per_sensor'])}; dropped chips "
        f"{json.dumps(info['dropped_chips'])}; skipped sources "
        f"{json.dumps({k: len(v) for k, v in info['skipped_sources'].items()})}"
        for split, info in splits.items()
    ]
    return "\n".join(
        [
            "---",
            card.to_yaml(),
            "---",
            "",
            f"# {name}",
            "",
            f"{total} chips of {size} x {size} pixels for [Clay](https://github.com/Clay-foundation/model), "
            "written by `clay_hf.geodata.builder.build_chip_dataset` (`scripts/prepare_chips.py`).",
            "",
            "One chip per row: `pixels` holds the `shape` (C, H, W) array as little-endian bytes of `dtype`; "
            "`clay_hf.geodata.chip_format.decode_chip` turns a row back into an array, "
            "`clay_hf.geodata.loader.get_dataloader` into batches of one band set.",
            "",
            *counts,
            "",
            "| split | source | sensor | bands | chips | license |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Settings: `{json.dumps(config, sort_keys=True)}`",
            "",
        ]
    )
