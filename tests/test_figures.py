"""clay_hf.apps.figures: the confusion-matrix PNG."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from clay_hf.apps.figures import confusion_matrix_png


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_confusion_matrix_png_is_a_valid_image(tmp_path):
    from PIL import Image

    path = confusion_matrix_png([[5, 1], [0, 3]], ["forest", "water"], tmp_path / "cm.png", title="test")
    width, height = _png_size(path)
    assert width > 100 and height > 100
    with Image.open(path) as image:
        image.verify()


def test_confusion_matrix_png_shades_cells_by_their_share_of_the_row(tmp_path):
    from PIL import Image

    path = confusion_matrix_png([[4, 0], [1, 1]], ["forest", "water"], tmp_path / "cm.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]  # written atomically: no temporary left
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    left, top, cell = 12 + 7 * len("forest"), 56, 44

    def corner(i: int, j: int) -> tuple[int, ...]:  # a pixel inside cell (i, j), clear of its count text
        return tuple(int(v) for v in rgb[top + i * cell + 2, left + j * cell + cell - 4])

    assert corner(0, 0) == (0, 0, 255)  # the whole row: full blue
    assert corner(0, 1) == (255, 255, 255)  # none of it: white
    assert corner(1, 0) == corner(1, 1) == (127, 127, 255)  # half each
