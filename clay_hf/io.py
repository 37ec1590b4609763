"""Reading rasters into chips: the only module that imports rasterio.

It returns plain numpy arrays plus metadata; everything after it is numpy/torch. Windows are read one
chip at a time (never a whole scene), and multi-file products (one file per band, at different
resolutions, as Sentinel-2 and Landsat ship) are resampled onto one grid at a chosen GSD.

A chip is a dict (the sample schema the data pipeline builds on):
    pixels (C, H, W) native dtype, band_names list[str], gsd float (metres), lat, lon (WGS84 centre),
    bounds (left, bottom, right, top) in the raster CRS, crs (WKT or EPSG string), source (str),
    row, col (chip origin in the target grid, pixels), valid (H, W) bool (False where any band is nodata).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ChipSizeError, RasterError

__all__ = ["MultiBandSource", "iter_chips"]

logger = logging.getLogger(__name__)


def _rasterio():
    try:
        import rasterio
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading rasters needs rasterio: pip install 'clay_hf[data]'") from err
    return rasterio


class MultiBandSource:
    """One or more single- or multi-band rasters on the same area, read as one band stack on a common grid.

    Args:
        paths: one raster per band (or one multi-band raster), in the band order the model should see.
        band_names: a name per band (default: the file stems).
        resolution: target GSD in metres (in the CRS's units for projected CRSs); default: the finest input.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        band_names: Sequence[str] | None = None,
        resolution: float | None = None,
    ) -> None:
        rasterio = _rasterio()
        if not paths:
            raise RasterError("no raster files given")
        self.paths = [str(p) for p in paths]
        self._datasets = []
        try:
            for path in self.paths:
                if not Path(path).exists() and "://" not in path:
                    raise RasterError(f"raster {path!r} does not exist")
                try:
                    self._datasets.append(rasterio.open(path))
                except rasterio.errors.RasterioIOError as err:
                    raise RasterError(f"cannot read raster {path!r}: {err}") from err
            for ds in self._datasets:
                if ds.crs is None:
                    raise RasterError(f"raster {ds.name!r} has no CRS; it cannot be placed on the Earth")
            crs = {ds.crs.to_string() for ds in self._datasets}
            if len(crs) > 1:
                raise RasterError(f"band files are in different CRSs {sorted(crs)}; reproject them to one CRS first")
        except BaseException:
            self.close()
            raise
        self.crs = self._datasets[0].crs
        count = sum(ds.count for ds in self._datasets)
        names = list(band_names) if band_names is not None else self._default_names()
        if len(names) != count:
            raise RasterError(f"{count} bands in {len(self.paths)} files but {len(names)} band names given")
        self.band_names = names
        # The common grid: the intersection of all extents at the target resolution.
        left = max(ds.bounds.left for ds in self._datasets)
        bottom = max(ds.bounds.bottom for ds in self._datasets)
        right = min(ds.bounds.right for ds in self._datasets)
        top = min(ds.bounds.top for ds in self._datasets)
        if right <= left or top <= bottom:
            raise RasterError(f"the band files {self.paths} do not overlap")
        self.resolution = float(resolution or min(min(ds.res) for ds in self._datasets))
        self.origin = (left, top)
        self.width = int(math.floor((right - left) / self.resolution + 1e-6))
        self.height = int(math.floor((top - bottom) / self.resolution + 1e-6))

    def _default_names(self) -> list[str]:
        names = []
        for ds in self._datasets:
            stem = Path(ds.name).stem
            names += [stem] if ds.count == 1 else [f"{stem}_{i + 1}" for i in range(ds.count)]
        return names

    @property
    def gsd(self) -> float:
        """Ground sample distance of the common grid in metres."""
        if self.crs.is_geographic:  # degrees -> metres along a meridian at the scene centre
            return self.resolution * 111_320.0
        return self.resolution * float(self.crs.linear_units_factor[1])

    def chip_bounds(self, row: int, col: int, size_h: int, size_w: int) -> tuple[float, float, float, float]:
        left = self.origin[0] + col * self.resolution
        top = self.origin[1] - row * self.resolution
        return (left, top - size_h * self.resolution, left + size_w * self.resolution, top)

    def read_chip(self, row: int, col: int, size: int | tuple[int, int]) -> dict[str, Any]:
        """Read one chip whose top-left pixel is (row, col) of the common grid."""
        rasterio = _rasterio()
        from rasterio.enums import Resampling
        from rasterio.warp import transform as warp_transform
        from rasterio.windows import from_bounds

        size_h, size_w = (size, size) if isinstance(size, int) else size
        bounds = self.chip_bounds(row, col, size_h, size_w)
        bands, valid = [], np.ones((size_h, size_w), dtype=bool)
        for ds in self._datasets:
            window = from_bounds(*bounds, transform=ds.transform)
            resampling = Resampling.nearest if math.isclose(ds.res[0], self.resolution) else Resampling.bilinear
            try:
                data = ds.read(window=window, out_shape=(ds.count, size_h, size_w), resampling=resampling, masked=True)
            except rasterio.errors.RasterioIOError as err:
                raise RasterError(f"cannot read a window of {ds.name!r} (corrupt or truncated?): {err}") from err
            valid &= ~np.ma.getmaskarray(data).any(axis=0)
            bands.append(np.ma.getdata(data))
        pixels = np.concatenate(bands, axis=0)  # (C, H, W)
        cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        lon, lat = warp_transform(self.crs, "EPSG:4326", [cx], [cy])
        return dict(
            pixels=pixels, band_names=list(self.band_names), gsd=self.gsd, lat=float(lat[0]), lon=float(lon[0]),
            bounds=bounds, crs=self.crs.to_string(), source=self.paths[0], row=row, col=col, valid=valid,
        )  # fmt: skip

    def close(self) -> None:
        for ds in self._datasets:
            ds.close()
        self._datasets = []

    def __enter__(self) -> MultiBandSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_chips(
    source: MultiBandSource, chip_size: int = 256, stride: int | None = None, max_nodata_fraction: float = 0.0
) -> Iterator[dict[str, Any]]:
    """Tile the common grid into ``chip_size`` chips (row-major), skipping chips with too much nodata."""
    stride = stride or chip_size
    if chip_size > min(source.height, source.width):
        raise ChipSizeError(
            f"chip_size {chip_size} is larger than the raster grid {source.height}x{source.width} at "
            f"{source.resolution} m; choose a chip size of at most {min(source.height, source.width)}"
        )
    for row in range(0, source.height - chip_size + 1, stride):
        for col in range(0, source.width - chip_size + 1, stride):
            chip = source.read_chip(row, col, chip_size)
            nodata = 1.0 - chip["valid"].mean()
            if nodata > max_nodata_fraction:
                logger.debug("skip chip (%d, %d): %.0f%% nodata", row, col, 100 * nodata)
                continue
            yield chip
