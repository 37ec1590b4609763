"""Shared by test_export.py and test_onnx_runtime.py: real Sentinel-2 chips, and comparing exports with eager."""

from __future__ import annotations

import numpy as np
import torch

CHIP_SIZES = (32, 64)  # multiples of the micro (4) and tiny (8) patch sizes
BATCH_SIZES = (1, 3)
SENSOR = "sentinel-2-l2a"
# top-left corners in the 120 x 120 px BigEarthNet scene: three chips of each size, partly overlapping
_ORIGINS = {32: [(0, 0), (40, 32), (88, 80)], 64: [(0, 0), (28, 56), (56, 20)]}


def real_chips() -> dict[int, dict]:
    """Per chip size: the raw chips ``(3, 10, N, N)`` of the real Sentinel-2 L2A scene and their metadata."""
    from clay_hf.geodata.raster import open_source
    from clay_hf.geodata.sample_data import sentinel2_l2a_geotiff

    chips = {}
    with open_source(sentinel2_l2a_geotiff()) as source:
        for size, origins in _ORIGINS.items():
            read = [source.read_chip(row, col, size) for row, col in origins]
            chips[size] = {
                "pixels": np.stack([c["pixels"] for c in read]).astype(np.float32),  # (3, C, N, N)
                "datetimes": [c["datetime"] for c in read],
                "lat": [c["lat"] for c in read],
                "lon": [c["lon"] for c in read],
            }
    return chips


def model_inputs(chips: dict, batch: int, patch_size: int) -> dict[str, torch.Tensor]:
    """The processor's outputs for the first ``batch`` chips, with their dates and locations."""
    from clay_hf import ClayImageProcessor

    processor = ClayImageProcessor(patch_size=patch_size, sensor=SENSOR)
    return dict(
        processor(
            chips["pixels"][:batch],
            datetimes=chips["datetimes"][:batch],
            lat=chips["lat"][:batch],
            lon=chips["lon"][:batch],
        )
    )


def positional(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Processor outputs in the exported files' input order, ``gsd`` one per chip."""
    b = inputs["pixel_values"].shape[0]
    gsd = inputs["gsd"].expand(b) if inputs["gsd"].ndim == 0 else inputs["gsd"]
    return inputs["pixel_values"], inputs["wavelengths"], gsd, inputs["time"], inputs["latlon"]


def exported_runner(path, names: list[str]):
    """``inputs -> [outputs]`` for an exported file: onnxruntime's CPU provider for ``.onnx``, ``torch.export.load``
    for ``.pt2``; each takes the processor's outputs."""
    from clay_hf.export import INPUT_NAMES
    from clay_hf.onnx_runtime import create_onnx_session

    if str(path).endswith(".onnx"):
        session = create_onnx_session(path)

        def run(inputs):
            feed = dict(zip(INPUT_NAMES, (x.numpy() for x in positional(inputs))))
            return [torch.from_numpy(x) for x in session.run(names, feed)]

        return run
    program = torch.export.load(str(path)).module()

    def run(inputs):
        with torch.no_grad():
            return list(program(*positional(inputs)))

    return run
