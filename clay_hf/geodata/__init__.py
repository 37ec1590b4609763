"""Geodata: from rasters on disk to model batches.

- :mod:`clay_hf.geodata.raster`: raster reading (the only module importing rasterio), windows, chips, QA masks;
- :mod:`clay_hf.geodata.sources`: describing sources (``SourceSpec``) and finding them in paths, folders, STAC;
- :mod:`clay_hf.geodata.chip_format`: the chip record on disk (Arrow schema, encode, decode);
- :mod:`clay_hf.geodata.builder`: the sharded Parquet chip dataset builder;
- :mod:`clay_hf.geodata.dataset_card`: the dataset card of a build, rendered from its manifest;
- :mod:`clay_hf.geodata.loader`: the streaming loader that turns chip shards into batches;
- :mod:`clay_hf.geodata.sample_data`: public sample imagery from the package index;
- :mod:`clay_hf.geodata.labelled`: the labelled sample scenes as chips with chip and pixel labels, spatially split.
"""
