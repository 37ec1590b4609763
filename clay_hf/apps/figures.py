"""Figures of evaluation results, drawn with Pillow (no plotting library needed).

>>> confusion_matrix_png([[5, 1], [0, 3]], ["forest", "water"], "cm.png", title="linear probe")
>>> map_quicklook_png(rgb, class_map, "map.png", class_names=["forest", "water"], title="segmentation")
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

__all__ = ["confusion_matrix_png", "map_quicklook_png"]


def confusion_matrix_png(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Draw a confusion matrix (rows true, columns predicted; colour = row-normalised share, text = count) as PNG
    with Pillow. Written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(confusion, dtype=np.int64)
    k = len(class_names)
    font = ImageFont.load_default()
    cell, left, top = 44, 12 + 7 * max(len(n) for n in class_names), 56
    image = Image.new("RGB", (left + cell * k + 12, top + cell * k + 28), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    draw.text((left, 24), "predicted (column index) ->", fill="black", font=font)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for i in range(k):
        draw.text((8, top + i * cell + cell // 2 - 6), f"{i} {class_names[i]}", fill="black", font=font)
        draw.text((left + i * cell + cell // 2 - 4, top - 14), str(i), fill="black", font=font)
        for j in range(k):
            shade = int(255 * (1 - shares[i, j]))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((x0 + 6, y0 + cell // 2 - 6), str(cm[i, j]), fill="black" if shade > 110 else "white", font=font)
    draw.text((8, top + cell * k + 8), "rows: true class; colour: share of the row", fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def _value_colors(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(H, W) floats (NaN = nodata) -> (H, W, 3) uint8 on a dark-blue -> yellow ramp, and the range shown."""
    finite = np.isfinite(values)
    low, high = np.percentile(values[finite], (2, 98)) if finite.any() else (0.0, 1.0)
    t = np.clip((np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12), 0, 1)[..., None]  # (H, W, 1)
    ramp = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    position = t * (len(ramp) - 1)
    i = np.minimum(position.astype(int), len(ramp) - 2)
    colours = ramp[i[..., 0]] * (1 - (position - i)) + ramp[i[..., 0] + 1] * (position - i)  # (H, W, 3)
    colours[~finite] = 255
    return colours.astype(np.uint8), float(low), float(high)


def map_quicklook_png(
    rgb: np.ndarray,
    values: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Sequence[int]] | None = None,
    title: str = "",
    nodata: float | None = None,
) -> Path:
    """A map beside its scene: ``rgb`` (3, H, W) in [0, 1] on the left, ``values`` (H, W) on the right, as PNG.

    With ``class_names`` the values are class indices drawn in ``colors`` (one RGB per class) with a legend;
    otherwise numbers on a colour ramp with its range. ``nodata`` (and NaN, and a masked array's mask) is white.
    Small scenes are enlarged (nearest neighbour) to at least 256 px. Written atomically.
    """
    from PIL import Image, ImageDraw, ImageFont

    mask = np.ma.getmaskarray(values)
    values = np.ma.getdata(values).astype(np.float64)
    missing = mask | ~np.isfinite(values) | ((values == nodata) if nodata is not None else False)
    left = (np.clip(np.moveaxis(np.asarray(rgb, dtype=np.float64), 0, -1), 0, 1) * 255).astype(np.uint8)  # (H, W, 3)
    if class_names is not None:
        palette = np.array(colors if colors is not None else [(128, 128, 128)] * len(class_names), dtype=np.uint8)
        index = np.clip(np.where(missing, 0, values), 0, len(palette) - 1).astype(int)
        right = palette[index]  # (H, W) -> (H, W, 3)
        right[missing] = 255
        legend = [(tuple(int(c) for c in palette[i]), name) for i, name in enumerate(class_names)]
    else:
        right, low, high = _value_colors(np.where(missing, np.nan, values))
        legend = [((68, 1, 84), f"{low:.3g}"), ((253, 231, 37), f"{high:.3g}")]
    scale = max(1, int(np.ceil(256 / max(left.shape[1], 1))))
    panels = [Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST) for a in (left, right)]
    font = ImageFont.load_default()
    width, height = panels[0].width, panels[0].height
    rows = (len(legend) + 2) // 3
    image = Image.new("RGB", (2 * width + 30, height + 40 + 16 * rows), "white")
    draw = ImageDraw.Draw(image)
    lines = textwrap.wrap(title, width=max(20, (2 * width + 10) // 6)) or [""]  # about 6 px per character
    image = Image.new("RGB", (image.width, image.height + 12 * (len(lines) - 1)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((10, 6 + 12 * i), line, fill="black", font=font)
    top = 24 + 12 * (len(lines) - 1)
    for i, panel in enumerate(panels):
        image.paste(panel, (10 + i * (width + 10), top))
    for i, (colour, name) in enumerate(legend):
        x, y = 10 + (i % 3) * ((2 * width + 10) // 3), top + height + 8 + 16 * (i // 3)
        draw.rectangle([x, y, x + 10, y + 10], fill=colour, outline=(90, 90, 90))
        draw.text((x + 16, y - 1), name, fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
