"""Clay v1.5 in a Gradio Space: upload a GeoTIFF of any sensor, find things in it from a few clicked examples
(every chip or patch scored, a heat map, detections and a score raster to download), get its embedding, find
similar chips of a sample collection, refine the search with positive and negative examples, and see the
masked-autoencoder reconstruction.

A thin shell over :mod:`clay_hf.apps.space` (all the logic, tested without a browser):

    python spaces/app.py                                   # the folder's model/ and collection/ (offline)
    python spaces/app.py --model outputs/train/final       # builds collection/ with that model on its first start
    CLAY_SPACE_MODEL=made-with-clay/Clay-v1.5-hf python spaces/app.py --port 7860
    python spaces/app.py --model path/to/clay-folder --collection spaces/collection --max-upload-mb 50

Settings (flag or environment): ``CLAY_SPACE_MODEL`` (a Clay folder or Hub id; default ``model/`` next to this
file, which a pushed Space bundles, else in a checkout the repository's tiny parity checkpoint converted once),
``CLAY_SPACE_COLLECTION`` (a folder from ``spaces/build_collection.py``; default ``collection/`` next to this
file), ``CLAY_SPACE_MAX_UPLOAD_MB`` (default 50), ``CLAY_SPACE_KEEP_MINUTES`` (default 30).

The collection records the model that embedded it. When it is missing, or another model embedded it, the app
builds it once with its own model, into that folder, before it starts (as ``spaces/build_collection.py --model``
with the same model would; it needs the sample data, fetched from the package index the first time), and loads
it as it is on every later start.

Uploads and results are temporary: Gradio's ``delete_cache`` removes every file the app wrote (uploads, result
files, images) once it is older than the keep time, on a schedule, and all of them when the server stops; what
it leaves (empty folders, raw upload files) goes on the same schedule, and the Space's own work folder holds only
the uploads of its small in-memory cache.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no usage pings

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402

from clay_hf.apps.space import (  # noqa: E402
    DEFAULT_MAX_UPLOAD_MB,
    MAX_SCENE_CHIPS,
    RESULT_COLUMNS,
    SCENE_LABELS,
    SCENE_LEVELS,
    SCENE_METHODS,
    SCENE_RESULT_COLUMNS,
    ClaySpace,
    SearchHits,
    SpaceInputError,
    default_model_path,
    load_space,
    prune_folder,
)
from clay_hf.errors import ClayError  # noqa: E402
from clay_hf.provenance import model_provenance  # noqa: E402

logger = logging.getLogger("clay_space")

IMAGE_PX = 320  # the preview and the three reconstruction images are shown this high, enlarged to fill it
SCENE_PX = 420  # the scene and its heat map are shown this high
CSS = """
#preview img, #recon-input img, #recon-masked img, #recon-output img, #results-gallery img,
#scene-view img, #scene-heatmap img, #scene-hits img, #scene-collection-hits img {
  image-rendering: pixelated;
}
#preview img, #recon-input img, #recon-masked img, #recon-output img {
  object-fit: contain;  /* Gradio's scale-down never enlarges: a 40 px chip stayed 40 px in a 320 px frame */
  width: 100%;
  height: 100%;
}
#scene-view img, #scene-heatmap img {
  /* Drawn as Gradio maps a click to the image's pixels (never enlarged; the scene image is made large enough) */
  object-fit: scale-down;
  width: 100%;
  height: 100%;
  cursor: crosshair;  /* a click marks the chip under it */
}
#results-gallery .caption-label, #scene-hits .caption-label, #scene-collection-hits .caption-label {
  /* the whole caption, wrapped, instead of one line cut with an ellipsis */
  white-space: normal;
  overflow-wrap: anywhere;
  max-width: calc(100% - 2 * var(--block-label-margin));
}
/* An event that fails shows its message once, in the toast: not also as an "Error" badge on every output. */
.gradio-container [data-testid="status-tracker"]:has(> .error) {
  display: none;
}
"""
USER_ERROR_TITLE = "Cannot use this file"  # the toast title of everything a user can get wrong
SERVER_ERROR = "something went wrong on the server"
# Gradio 6 toasts: the title shown is the toast's type ("Error"), not gr.Error(title=); messages of the same type
# pile up in one toast ("Error (3)") that no longer closes by itself; a later success leaves it. So every user
# action first closes the toasts still open (one message at a time, none after a success), and an event that
# fails retitles its toast.
CLOSE_TOASTS_JS = "() => { document.querySelectorAll('[data-testid=toast-close]').forEach((b) => b.click()); }"
TITLE_TOAST_JS = f"""
async () => {{
  for (let i = 0; i < 100; i++) {{  // the toast is rendered after the event reports its failure
    const toasts = [...document.querySelectorAll("[data-testid=toast-body].error")];
    if (toasts.length) {{
      for (const toast of toasts) {{
        const text = toast.querySelector("[data-testid=toast-text]")?.textContent ?? "";
        const title = toast.querySelector(".toast-title")?.firstChild;
        const user = !text.startsWith({json.dumps(SERVER_ERROR)});
        if (title && user) title.nodeValue = {json.dumps(USER_ERROR_TITLE + " ")};
        toast.dataset.titled = "true";
      }}
      return;
    }}
    await new Promise((resolve) => setTimeout(resolve, 20));
  }}
}}
"""
THUMBNAIL_PX = 128  # gallery thumbnails are enlarged (nearest neighbour) to at least this size
HERE = Path(__file__).resolve().parent  # the Space folder: model/, collection/, examples/ (and clay_hf/ when pushed)
EXAMPLES = HERE / "examples"  # written by build_collection.py
# In a checkout only (a pushed Space bundles model/ instead): the offline model when model/ is missing.
PARITY_CHECKPOINT = HERE.parent / "tests" / "fixtures" / "clay-micro-original.ckpt"
DEFAULT_KEEP_MINUTES = 30.0


def cache_schedule(keep_seconds: float) -> tuple[int, int]:
    """``delete_cache`` for Gradio: (how often to look, in seconds; how old a file may get, in seconds)."""
    age = max(1, int(keep_seconds))
    return max(1, min(age, 300)), age


def _friendly(fn):
    """User mistakes become a gr.Error with the library's message, logged in one line; anything else a short
    generic message on the page and the full traceback in the log (once: Gradio is told not to print it again)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ClayError as err:
            logger.info("%s refused the input: %s", fn.__name__, err)
            # duration=None: the message stays while the person fixes the file; their next action closes it
            raise gr.Error(str(err), title=USER_ERROR_TITLE, duration=None, print_exception=False) from None
        except Exception as err:  # noqa: BLE001 - the page must show a message, not a stack trace
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"{SERVER_ERROR} ({type(err).__name__}); try another file", title="Server error", print_exception=False
            ) from err

    return wrapper


def _metadata_label(metadata: dict | None) -> gr.Accordion:
    """The closed metadata panel's title: what was detected, so the JSON need not be opened to check it."""
    if not metadata:
        return gr.Accordion(label="Metadata")
    bands = len(metadata.get("bands", []))
    date = str(metadata.get("date") or "unknown")
    parts = [
        f"{metadata.get('sensor')} ({metadata.get('sensor_source')})",
        f"{bands} band{'s' if bands != 1 else ''}",
        f"{metadata.get('width_px')} x {metadata.get('height_px')} px",
        f"{metadata.get('gsd_m'):g} m",
        "date unknown" if date.startswith("unknown") else date[:10],
    ]
    return gr.Accordion(label="Metadata: " + " · ".join(parts))


def _gallery(hits: SearchHits) -> list[tuple[np.ndarray, str]]:
    factor = max(1, -(-THUMBNAIL_PX // hits.thumbnails.shape[1]))  # ceil
    big = hits.thumbnails.repeat(factor, axis=1).repeat(factor, axis=2)  # (k, S, S, 3) -> (k, fS, fS, 3)
    return list(zip(list(big), hits.captions()))


def _examples_dropdown(label: str, elem_id: str) -> gr.Dropdown:
    """An empty list of example ids (chips or patches) that the user fills by choosing, clicking or typing."""
    return gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label=label, elem_id=elem_id)


def build_demo(space: ClaySpace, keep_seconds: float = DEFAULT_KEEP_MINUTES * 60) -> gr.Blocks:
    """The page. Every event calls one :class:`ClaySpace` method and has an ``api_name``; files it writes are
    deleted once older than ``keep_seconds`` (and at shutdown)."""
    n = len(space.collection)
    sources = space.collection.info.get("sources", [])
    licences = sorted({s["license"] for s in sources if s.get("license")})
    decoder = "with its MAE decoder" if space.pretraining is not None else "encoder only (no reconstruction)"
    model_name = str(getattr(space.encoder.config, "_name_or_path", "") or "clay")
    model_name = Path(model_name).name if os.path.isabs(model_name) else model_name  # no server paths on the page

    @_friendly
    def inspect(path, sensor, wavelengths):
        return space.inspect(path, sensor, wavelengths)

    @_friendly
    def embed(path, sensor, wavelengths):
        npy, parquet, vector = space.embed(path, sensor, wavelengths)
        head = ", ".join(f"{v:.4f}" for v in vector[:6])
        summary = f"{vector.shape[0]} numbers (cls token of the centre chip), L2 norm {np.linalg.norm(vector):.3f}: [{head}, ...]"
        return str(npy), str(parquet), summary

    def _hits_outputs(hits: SearchHits):
        choices = [
            (caption.split(" · ")[0] + " " + chip_id, chip_id) for caption, chip_id in zip(hits.captions(), hits.ids)
        ]
        return (
            _gallery(hits),
            hits.rows(),
            gr.Dropdown(choices=choices, value=[]),
            gr.Dropdown(choices=choices, value=[]),
        )

    @_friendly
    def search(path, sensor, wavelengths, k):
        return _hits_outputs(space.search(path, sensor, wavelengths, k=k))

    @_friendly
    def refine(path, sensor, wavelengths, positives, negatives, k):
        hits = space.refine(path, sensor, wavelengths, positives=positives, negatives=negatives, k=k)
        return _gallery(hits), hits.rows()

    @_friendly
    def reconstruct(path, sensor, wavelengths, seed):
        return space.reconstruct(path, sensor, wavelengths, seed=int(seed or 0))

    def _marks_outputs(image, positives, negatives):
        return image, positives, negatives  # plain lists (custom values of the dropdowns), for the API too

    @_friendly
    def embed_scene(path, sensor, wavelengths, chip_size, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for one
        def report(done, total):
            progress((done, total), desc="embedding the scene's chips", unit="chips")

        scene = space.embed_scene(path, sensor, wavelengths, chip_size, progress=report)
        return (*_marks_outputs(space.scene_image(scene), [], []), scene.describe())

    @_friendly
    def mark(path, sensor, wavelengths, chip_size, level, positives, negatives, label, x, y):
        return _marks_outputs(
            *space.mark(path, sensor, wavelengths, chip_size, level, positives, negatives, x, y, label)
        )

    @_friendly
    def mark_click(path, sensor, wavelengths, chip_size, level, positives, negatives, label, evt: gr.SelectData):
        if evt is None or not evt.index:  # Gradio sends no index for a click beside the image
            raise SpaceInputError("the click was outside the scene; click on the scene image to mark a chip")
        scene = space.embed_scene(path, sensor, wavelengths, chip_size)
        x, y = (float(v) / scene.view_scale for v in evt.index)  # shown pixels -> scene pixels
        return _marks_outputs(
            *space.mark(path, sensor, wavelengths, chip_size, level, positives, negatives, x, y, label)
        )

    @_friendly
    def find(path, sensor, wavelengths, chip_size, level, positives, negatives, method, k, with_collection):
        hits = space.find(
            path, sensor, wavelengths, chip_size, level, positives, negatives, method, k, bool(with_collection)
        )
        return (
            hits.image,
            _gallery(hits),
            hits.rows(),
            _gallery(hits.collection) if hits.collection is not None else [],
            str(hits.detections),
            str(hits.raster),
            hits.summary,
        )

    provenance = model_provenance(space.encoder)
    name = "Clay v1.5" if provenance.released else "Clay"
    title = f"{name}: find, embed, search and reconstruct Earth-observation imagery"
    with gr.Blocks(title=title, delete_cache=cache_schedule(keep_seconds)) as demo:
        if not provenance.released:  # a toy's scores and reconstructions look like results: say what they are
            gr.Markdown(
                f"**⚠ {provenance.label}.** Scores and reconstructions below show the code path, not Clay's quality.",
                elem_id="model-warning",
            )
        gr.Markdown(
            f"# {name} · Earth-observation embeddings\n"
            "Upload a **GeoTIFF of any sensor** (Sentinel-2, Landsat, Sentinel-1, NAIP, PlanetScope, or your own "
            "bands with their wavelengths). **Find things in it**: Clay embeds every chip of the scene, you click a "
            "few examples of what you look for (and of what not), and every chip, or every patch, is scored: a heat "
            "map, the best hits, and detections (GeoJSON) and a score raster (GeoTIFF) for a GIS. Or take its centre "
            f"chip's embedding, find the most similar chips among **{n} precomputed sample chips**, mark positive and "
            "negative examples to refine the search, and see the masked-autoencoder reconstruction.\n\n"
            f"**Upload limit: {space.max_upload_mb:g} MB** (a scene of at most {MAX_SCENE_CHIPS} chips), GeoTIFF/COG "
            "(`.tif`) with a coordinate reference system. "
            f"Model: `{model_name}` ({decoder}; {provenance.description}). Your file is processed in a temporary folder and not kept."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label=f"GeoTIFF (max {space.max_upload_mb:g} MB)",
                    file_types=[".tif", ".tiff"],
                    type="filepath",
                    elem_id="upload",
                )
                sensor = gr.Dropdown(
                    space.sensor_choices,
                    value=space.sensor_choices[0],
                    label="Sensor",
                    info="detected from the file's tags, or choose one",
                    elem_id="sensor",
                )
                wavelengths = gr.Textbox(
                    label="Wavelengths (µm), one per band, optional",
                    placeholder="e.g. 0.49, 0.56, 0.665, 0.842 (for bands the sensor list does not have)",
                    elem_id="wavelengths",
                )
                k = gr.Slider(1, min(n, 32), value=min(8, n), step=1, label="Results", elem_id="k")
                examples = sorted(str(p) for p in EXAMPLES.glob("*.tif"))
            with gr.Column(scale=2):
                preview = gr.Image(
                    label="RGB preview",
                    type="numpy",
                    format="png",
                    interactive=False,
                    elem_id="preview",
                    height=IMAGE_PX,
                )
                with gr.Accordion("Metadata", open=False, elem_id="metadata-panel") as metadata_panel:
                    metadata = gr.JSON(label="Metadata", elem_id="metadata")

        with gr.Tab("Find in the scene", elem_id="tab-scene"):
            gr.Markdown(
                "**Embed the scene**: every chip of the upload, not only its centre. Then choose *positive* and "
                "click on the scene where what you look for is (*negative* for what it is not; a second click "
                "unmarks), and **Find**: every chip (or, at patch level, every patch) is scored, the heat map "
                "shows the scores, the best hits are listed, and the detections (GeoJSON, EPSG:4326) and the "
                "score raster (GeoTIFF in the scene's CRS) can be downloaded."
            )
            with gr.Row():
                chip_size = gr.Dropdown(
                    space.scene_chip_sizes,
                    value=space.scene_chip_sizes[0],
                    label="Chip size (px)",
                    info="the collection's first",
                    elem_id="scene-chip-size",
                )
                level = gr.Radio(list(SCENE_LEVELS), value="chip", label="Level", elem_id="scene-level")
                label = gr.Radio(list(SCENE_LABELS), value="positive", label="A click marks", elem_id="scene-label")
                method = gr.Radio(list(SCENE_METHODS), value="cosine", label="Scoring", elem_id="scene-method")
                with_collection = gr.Checkbox(
                    False, label="also search the sample collection", elem_id="scene-with-collection"
                )
            embed_scene_button = gr.Button("Embed the scene", variant="primary", elem_id="scene-embed-btn")
            scene_summary = gr.Textbox(label="Scene", interactive=False, elem_id="scene-summary")
            with gr.Row():
                scene_view = gr.Image(
                    label="Scene and chip grid: click to mark (green positive, red negative)",
                    type="numpy",
                    format="png",
                    interactive=False,
                    height=SCENE_PX,
                    elem_id="scene-view",
                )
                heat_view = gr.Image(
                    label="Scores: heat map by rank (dark low, bright high), best hits in cyan",
                    type="numpy",
                    format="png",
                    interactive=False,
                    height=SCENE_PX,
                    elem_id="scene-heatmap",
                )
            with gr.Row():
                scene_positives = _examples_dropdown("Positive examples", "scene-positives")
                scene_negatives = _examples_dropdown("Negative examples", "scene-negatives")
            with gr.Accordion("Mark by pixel (column x, row y of the upload)", open=False):
                with gr.Row():
                    mark_x = gr.Number(label="x (pixel column)", precision=0, elem_id="scene-x")
                    mark_y = gr.Number(label="y (pixel row)", precision=0, elem_id="scene-y")
                    mark_button = gr.Button("Mark", elem_id="scene-mark-btn")
            find_button = gr.Button("Find", variant="primary", elem_id="scene-find-btn")
            find_summary = gr.Textbox(label="Search", interactive=False, elem_id="scene-find-summary")
            scene_gallery = gr.Gallery(
                label="Best hits in the scene (rank · score · place)",
                columns=6,
                height="auto",
                object_fit="contain",
                elem_id="scene-hits",
            )
            scene_table = gr.Dataframe(
                headers=SCENE_RESULT_COLUMNS, label="Hits", interactive=False, elem_id="scene-table"
            )
            collection_gallery = gr.Gallery(
                label="Nearest chips of the sample collection (when asked: cosine, with the examples' chips)",
                columns=6,
                height="auto",
                object_fit="contain",
                elem_id="scene-collection-hits",
            )
            with gr.Row():
                detections_file = gr.File(
                    label="Detections (GeoJSON, EPSG:4326)", interactive=False, elem_id="scene-detections"
                )
                raster_file = gr.File(
                    label="Scores (GeoTIFF, the scene's CRS)", interactive=False, elem_id="scene-raster"
                )

        with gr.Tab("Similar chips", elem_id="tab-search"):
            search_button = gr.Button("Search the collection", variant="primary", elem_id="search-btn")
            gallery = gr.Gallery(
                label="Most similar chips (rank · cosine · percentile · place · sensor · date)",
                columns=4,
                height="auto",
                object_fit="contain",
                elem_id="results-gallery",
            )
            with gr.Row():
                positives = _examples_dropdown("More like these (positive examples)", "positives")
                negatives = _examples_dropdown("Less like these (negative examples)", "negatives")
            refine_button = gr.Button("Refine the search", elem_id="refine-btn")
            table = gr.Dataframe(headers=RESULT_COLUMNS, label="Results", interactive=False, elem_id="results-table")

        with gr.Tab("Embedding", elem_id="tab-embedding"):
            embed_button = gr.Button("Compute embedding", variant="primary", elem_id="embed-btn")
            summary = gr.Textbox(label="Embedding", interactive=False)
            with gr.Row():
                npy_file = gr.File(label="embedding.npy", interactive=False)
                parquet_file = gr.File(label="embedding.parquet (GeoParquet)", interactive=False)

        with gr.Tab("Reconstruction", elem_id="tab-reconstruction"):
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Mask seed (which 75% of patches are hidden)")
                recon_button = gr.Button("Reconstruct", variant="primary", elem_id="recon-btn")
            with gr.Row():
                recon_input = gr.Image(
                    label="Input (centre chip)", type="numpy", format="png", height=IMAGE_PX, elem_id="recon-input"
                )
                recon_masked = gr.Image(
                    label="Masked input (what the model sees)",
                    type="numpy",
                    format="png",
                    height=IMAGE_PX,
                    elem_id="recon-masked",
                )
                recon_output = gr.Image(
                    label="Reconstruction + visible patches",
                    type="numpy",
                    format="png",
                    height=IMAGE_PX,
                    elem_id="recon-output",
                )
            gr.Markdown(
                "As in the MAE paper: the input, the patches the encoder sees (the rest grey), and the "
                "decoder's prediction for the hidden patches with the visible ones pasted back."
            )

        gr.Markdown(
            "Collection imagery: "
            + ("; ".join(licences) if licences else "see collection.json")
            + ". Similarity is the cosine of centred embeddings; refining averages the upload with the positive chips "
            "and moves away from the negative ones (Rocchio)."
        )

        file_inputs = [upload, sensor, wavelengths]
        triggers = [
            upload.upload,
            sensor.input,
            wavelengths.submit,
            embed_button.click,
            search_button.click,
            refine_button.click,
            recon_button.click,
            embed_scene_button.click,
            scene_view.select,
            heat_view.select,
            mark_button.click,
            find_button.click,
        ]
        if examples:

            def example(path):
                image, meta = inspect(path, None, None)
                return image, meta, _metadata_label(meta)

            example_list = gr.Examples(
                [[p] for p in examples],
                inputs=[upload],
                label="Example upload",
                fn=example,
                outputs=[preview, metadata, metadata_panel],
                run_on_click=True,
                cache_examples=False,
                api_name="load_example",
            )
            triggers.append(example_list.dataset.click)
        gr.on(triggers, None, js=CLOSE_TOASTS_JS)  # browser only: each action starts without the last one's toast

        def on(trigger, fn, inputs, outputs, api_name):
            event = trigger(fn, inputs, outputs, api_name=api_name)
            event.failure(None, js=TITLE_TOAST_JS)
            return event

        for trigger, name in (
            (upload.upload, "inspect"),
            (sensor.input, "inspect_with_sensor"),
            (wavelengths.submit, "inspect_with_wavelengths"),
        ):
            on(trigger, inspect, file_inputs, [preview, metadata], name).success(
                _metadata_label, metadata, metadata_panel, api_visibility="private", queue=False
            )
        on(embed_button.click, embed, file_inputs, [npy_file, parquet_file, summary], "embed")
        on(search_button.click, search, [*file_inputs, k], [gallery, table, positives, negatives], "search")
        on(refine_button.click, refine, [*file_inputs, positives, negatives, k], [gallery, table], "refine")
        scene_inputs = [*file_inputs, chip_size]
        marks = [scene_view, scene_positives, scene_negatives]
        examples_in = [*scene_inputs, level, scene_positives, scene_negatives]
        on(embed_scene_button.click, embed_scene, scene_inputs, [*marks, scene_summary], "embed_scene")
        on(scene_view.select, mark_click, [*examples_in, label], marks, "mark_click")
        on(heat_view.select, mark_click, [*examples_in, label], marks, "mark_click_heatmap")
        on(mark_button.click, mark, [*examples_in, label, mark_x, mark_y], marks, "mark")
        on(
            find_button.click,
            find,
            [*examples_in, method, k, with_collection],
            [heat_view, scene_gallery, scene_table, collection_gallery, detections_file, raster_file, find_summary],
            "find",
        )
        on(
            recon_button.click,
            reconstruct,
            [*file_inputs, seed],
            [recon_input, recon_masked, recon_output],
            "reconstruct",
        )
    return demo


def _tidy_lifespan(keep_seconds: float):
    """A FastAPI lifespan that prunes Gradio's cache folder on ``delete_cache``'s schedule and at shutdown:
    what Gradio's own deletion leaves (empty folders, raw upload files) once it is older than the keep time."""
    frequency, age = cache_schedule(keep_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def tidy():
            while True:
                await asyncio.sleep(frequency)
                await asyncio.to_thread(prune_folder, get_upload_folder(), age)

        task = asyncio.create_task(tidy())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            prune_folder(get_upload_folder(), age)

    return lifespan


def launch_kwargs(space: ClaySpace, keep_seconds: float = DEFAULT_KEEP_MINUTES * 60) -> dict:
    """What ``launch()`` needs beyond host and port: the upload limit enforced by the server, theme, CSS, and
    the tidying of Gradio's cache folder (pass the ``keep_seconds`` given to :func:`build_demo`)."""
    return {
        "max_file_size": f"{int(space.max_upload_mb * 1024)}kb",
        "allowed_paths": [str(EXAMPLES)],
        "css": CSS,
        "theme": gr.themes.Soft(),
        "app_kwargs": {"lifespan": _tidy_lifespan(keep_seconds)},
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", default=None, help="Clay folder or Hub id (default: $CLAY_SPACE_MODEL, else model/ next to app.py)"
    )
    parser.add_argument(
        "--collection",
        default=None,
        help="collection folder (default: $CLAY_SPACE_COLLECTION, else collection/ next to app.py)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=None, help="upload limit in MB (default 50)")
    parser.add_argument(
        "--keep-minutes",
        type=float,
        default=None,
        help=f"delete uploads and results older than this (default {DEFAULT_KEEP_MINUTES:g})",
    )
    parser.add_argument("--host", default=None, help="interface to listen on (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    model = args.model or os.environ.get("CLAY_SPACE_MODEL") or default_model_path(HERE, checkpoint=PARITY_CHECKPOINT)
    collection = args.collection or os.environ.get("CLAY_SPACE_COLLECTION") or HERE / "collection"
    limit = args.max_upload_mb or float(os.environ.get("CLAY_SPACE_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB))
    space = load_space(model, collection, limit)  # loaded once, before the first request
    keep = args.keep_minutes or float(os.environ.get("CLAY_SPACE_KEEP_MINUTES", DEFAULT_KEEP_MINUTES))
    demo = build_demo(space, keep_seconds=keep * 60)
    try:
        demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs(space, keep_seconds=keep * 60))
    finally:
        space.close()


if __name__ == "__main__":
    main()
