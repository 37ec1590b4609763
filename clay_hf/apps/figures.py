"""Figures of evaluation results, drawn with Pillow (no plotting library needed).

>>> confusion_matrix_png([[5, 1], [0, 3]], ["forest", "water"], "cm.png", title="linear probe")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

__all__ = ["confusion_matrix_png"]


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
