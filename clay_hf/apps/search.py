"""Similarity search over Clay embeddings: exact cosine search, search by examples, and evaluation.

    >>> scores, indices = cosine_search(query, embeddings, k=5)             # (D,) against (N, D)
    >>> index = EmbeddingIndex(embeddings, ids=chip_ids, metadata={"lat": lats, "lon": lons})
    >>> index = EmbeddingIndex.from_parquet("emb/", center=True)            # what embed_to_parquet / embed.py wrote
    >>> index = EmbeddingIndex.from_parquet("user/my-embeddings")           # the same folder pushed to the Hub
    >>> hits = index.search("s2/0_32", k=10)                                # by id, or by a (D,) vector
    >>> hits                                                                # a table: rank, id, cosine, percentile...
    >>> hits.to_pandas()                                                    # a DataFrame, footprints as shapely
    >>> hits = index.search_examples(positive=["s2/0_32", "s2/64_96"], negative=["s2/0_0"], k=10)
    >>> precision_at_k(embeddings, labels, k=5)                             # leave-one-out retrieval quality

Shapes: N embeddings in the collection, Q queries, D embedding width, k results per query.

Exact search is batched matrix products in torch: the queries are normalised once, the collection is read in
chunks of ``batch_size`` rows (each normalised once), and a running top-k is kept, so a memory-mapped
``(N, D)`` array larger than memory works. Search by examples follows Clay's no-code explorer (Rocchio):
mean of the normalised positive examples minus ``beta`` times the mean of the negative ones, renormalised.

:class:`EmbeddingIndex` can also hand the search to an approximate FAISS index, built through ``datasets``'
own FAISS support (``Dataset.add_faiss_index_from_external_arrays`` / ``search_batch``); that needs
``pip install faiss-cpu``. Cosine similarity throughout: FAISS uses the inner product of normalised vectors.

Two things make the index's hits readable beyond the raw cosine:

- **Nodata.** A chip that is a third nodata has an embedding that mostly describes the fill, so such chips match
  each other at cosine ~1.0 and top every search they enter. The index knows each row's ``nodata_fraction``
  (the column :mod:`clay_hf.apps.embeddings` writes; rows without it count as 0) and leaves rows above
  ``max_nodata`` (default :data:`~clay_hf.geodata.chip_format.DEFAULT_MAX_NODATA`) out of every result; a query
  or positive example chosen by id that has more nodata than that is refused.
- **Percentile.** Each hit's ``percentile`` (0-100) is the share of all pairs of chips of the collection that are
  less similar to each other (same cosine, centred when the index is) than the hit is to the query: 50 is a
  typical pair, 100 as similar as the collection's most similar pair (or more). It says how close a match is
  when a model squeezes every cosine into 0.998-0.999. The pairs are those of every row when the collection has
  at most ``PERCENTILE_SAMPLE_ROWS`` rows, else of that many rows drawn once with a fixed seed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ClayInputError
from ..geodata.chip_format import DEFAULT_MAX_NODATA

__all__ = [
    "cosine_search",
    "refine_query",
    "search_by_examples",
    "precision_at_k",
    "SearchResult",
    "EmbeddingIndex",
    "embedding_files",
]

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
DEFAULT_BATCH_SIZE = 65536  # collection rows per matrix product
DEFAULT_QUERY_BATCH_SIZE = 4096  # queries per matrix product
PERCENTILE_SAMPLE_ROWS = 2048  # rows whose pairs (about 2.1 million) are the reference of the hits' percentiles
_FAISS_INDEX_NAME = "embedding"
_VECTOR_COLUMNS = ("embedding", "mean_embedding", "patch_embeddings")  # of clay_hf.apps.embeddings
_PER_PATCH_COLUMNS = ("patch_grid", "patch_nodata_fraction")  # read with the patch tokens (clay_hf.apps.finder)
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name


# ---------------------------------------------------------------------------------------------- exact search


def _as_float_tensor(values: Any, name: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        values = np.asarray(values)
        values = values if values.flags.writeable else values.copy()  # a read-only memmap chunk
    tensor = torch.as_tensor(values)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise ClayInputError(f"{name} must be a float array or tensor, got dtype {tensor.dtype}")
    return tensor.float()


def _normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Unit rows (float32); an all-zero row stays zero, so it scores 0 against everything."""
    return F.normalize(vectors.float(), dim=-1)


def _check_queries(query: Any, width: int) -> tuple[torch.Tensor, bool]:
    """``(D,)`` or ``(Q, D)`` -> ``(Q, D)`` float tensor and whether the input was a single query."""
    q = _as_float_tensor(query, "query")
    if q.ndim not in (1, 2) or q.shape[-1] != width:
        raise ClayInputError(
            f"query must have shape (D,) or (Q, D) with D={width} (the embeddings' width), got {tuple(q.shape)}"
        )
    single = q.ndim == 1
    return (q[None] if single else q), single  # (D,) -> (1, D)


def _check_collection(embeddings: Any) -> tuple[int, int]:
    shape = tuple(getattr(embeddings, "shape", ()))
    if len(shape) != 2 or shape[0] < 1:
        raise ClayInputError(f"embeddings must be a non-empty (N, D) array or tensor, got shape {shape}")
    return shape[0], shape[1]


def cosine_search(
    query: ArrayLike,
    embeddings: ArrayLike,
    k: int = 10,
    batch_size: int = DEFAULT_BATCH_SIZE,
    query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE,
    normalized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine similarity search.

    Args:
        query: ``(D,)`` one query or ``(Q, D)`` several.
        embeddings: ``(N, D)`` numpy array (a ``np.memmap`` is read chunk by chunk) or torch tensor.
        k: results per query; at most N are returned.
        batch_size: collection rows per matrix product (bounds memory at ``query_batch_size x batch_size``).
        query_batch_size: queries per matrix product.
        normalized: the query and the embeddings already have unit rows (skips normalising them).
    Returns:
        ``(scores, indices)``: cosine similarities, best first, and row indices into ``embeddings``;
        ``(k,)`` each for one query, ``(Q, k)`` for several.
    """
    n, width = _check_collection(embeddings)
    if k < 1 or batch_size < 1 or query_batch_size < 1:
        raise ClayInputError(
            f"k, batch_size and query_batch_size must be positive, got {k}, {batch_size}, {query_batch_size}"
        )
    queries, single = _check_queries(query, width)
    device = embeddings.device if isinstance(embeddings, torch.Tensor) else queries.device
    queries = queries.to(device)
    queries = queries if normalized else _normalize(queries)  # (Q, D), once
    k = min(k, n)
    num_queries = queries.shape[0]
    best_scores = torch.empty(num_queries, 0, device=device)  # (Q, k') running top-k
    best_indices = torch.empty(num_queries, 0, dtype=torch.long, device=device)
    for start in range(0, n, batch_size):
        chunk = _as_float_tensor(embeddings[start : start + batch_size], "embeddings").to(device)  # (n_c, D)
        chunk = chunk if normalized else _normalize(chunk)  # each collection row is normalised once
        chunk_indices = torch.arange(start, start + chunk.shape[0], device=device)  # (n_c,)
        new_scores, new_indices = [], []
        for q_start in range(0, num_queries, query_batch_size):
            rows = slice(q_start, q_start + query_batch_size)
            scores = queries[rows] @ chunk.T  # (Q_b, D) x (D, n_c) -> (Q_b, n_c)
            scores = torch.cat((best_scores[rows], scores), dim=1)  # (Q_b, k' + n_c)
            indices = torch.cat((best_indices[rows], chunk_indices.expand(scores.shape[0], -1)), dim=1)
            top = scores.topk(min(k, scores.shape[1]), dim=1)  # (Q_b, k)
            new_scores.append(top.values)
            new_indices.append(torch.gather(indices, 1, top.indices))
        best_scores, best_indices = torch.cat(new_scores), torch.cat(new_indices)  # (Q, k)
    if single:
        return best_scores[0], best_indices[0]
    return best_scores, best_indices


def _search_excluding(
    queries: torch.Tensor, embeddings: ArrayLike, k: int, exclude: torch.Tensor, **search_kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k for ``(Q, D)`` queries without the rows in ``exclude`` ``(Q, m)`` (distinct indices per query).

    Searches ``k + m`` and drops the excluded hits; every query keeps exactly ``min(k, N - m)`` results.
    """
    n = embeddings.shape[0]
    m = exclude.shape[1]
    scores, indices = cosine_search(queries, embeddings, k=min(k + m, n), **search_kwargs)  # (Q, k + m)
    keep = ~(indices[:, :, None] == exclude[:, None, :].to(indices.device)).any(dim=2)  # (Q, k + m)
    keep &= keep.cumsum(dim=1) <= k
    kept = int(keep[0].sum()) if len(keep) else 0
    return scores[keep].reshape(-1, kept), indices[keep].reshape(-1, kept)  # (Q, min(k, N - m))


def refine_query(
    positives: ArrayLike, negatives: ArrayLike | None = None, alpha: float = 1.0, beta: float = 0.5
) -> torch.Tensor:
    """A query from examples (Rocchio, as in Clay's explorer): ``alpha * mean(pos) - beta * mean(neg)``, unit length.

    Args:
        positives: ``(P, D)`` (or ``(D,)``) embeddings of examples of what is wanted.
        negatives: ``(M, D)`` embeddings of examples to move away from, or None.
        alpha, beta: weights of the positive and the negative mean (each example normalised first). The
            default ratio 0.5 is Qdrant's "average_vector" recommendation (``2 mean(pos) - mean(neg)``); raise
            ``beta`` towards 1 to push the negatives' neighbours further down.
    Returns:
        ``(D,)`` unit query vector.
    """
    pos = _as_float_tensor(positives, "positives")
    pos = pos[None] if pos.ndim == 1 else pos  # (D,) -> (1, D)
    if pos.ndim != 2 or pos.shape[0] == 0:
        raise ClayInputError(f"positives must be a non-empty (P, D) array, got shape {tuple(pos.shape)}")
    query = alpha * _normalize(pos).mean(dim=0)  # (D,)
    if negatives is not None:
        neg = _as_float_tensor(negatives, "negatives")
        neg = neg[None] if neg.ndim == 1 else neg
        if neg.ndim != 2 or neg.shape[1] != pos.shape[1]:
            raise ClayInputError(
                f"negatives must have shape (M, {pos.shape[1]}) like the positives, got {tuple(neg.shape)}"
            )
        if neg.shape[0]:
            query = query - beta * _normalize(neg).to(query.device).mean(dim=0)
    if float(query.norm()) < 1e-6:
        raise ClayInputError(
            "the positive and negative examples cancel out (the refined query is zero); "
            "pass different examples or a smaller beta"
        )
    return _normalize(query)


def _as_index_tensor(ids: Any, n: int, name: str) -> torch.Tensor:
    index = torch.as_tensor(np.asarray(ids if ids is not None else [], dtype=np.int64).reshape(-1))
    if len(index) and (index.min() < -n or index.max() >= n):
        raise ClayInputError(f"{name} must be row indices in [0, {n}), got {index.tolist()}")
    return torch.unique(index % n)


def search_by_examples(
    embeddings: ArrayLike,
    positive_ids: Sequence[int] | ArrayLike,
    negative_ids: Sequence[int] | ArrayLike | None = None,
    k: int = 10,
    alpha: float = 1.0,
    beta: float = 0.5,
    exclude_examples: bool = True,
    **search_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Search with a query refined from example rows of the collection (see :func:`refine_query`).

    Args:
        embeddings: ``(N, D)``.
        positive_ids, negative_ids: row indices of the positive and negative examples.
        exclude_examples: leave the examples themselves out of the results.
        search_kwargs: ``batch_size``, ``query_batch_size`` of :func:`cosine_search`.
    Returns:
        ``(scores, indices)``, ``(k,)`` each (fewer when the collection has fewer rows left).
    """
    n, _ = _check_collection(embeddings)
    pos = _as_index_tensor(positive_ids, n, "positive_ids")
    if len(pos) == 0:
        raise ClayInputError("search_by_examples needs at least one positive example, got none")
    neg = _as_index_tensor(negative_ids, n, "negative_ids")
    rows = lambda index: _as_float_tensor(embeddings[index.numpy()], "embeddings")  # noqa: E731
    query = refine_query(rows(pos), rows(neg) if len(neg) else None, alpha=alpha, beta=beta)
    if not exclude_examples:
        return cosine_search(query, embeddings, k=k, **search_kwargs)
    excluded = torch.unique(torch.cat((pos, neg)))[None]  # (1, m)
    scores, indices = _search_excluding(query[None], embeddings, k, excluded, **search_kwargs)
    return scores[0], indices[0]


def precision_at_k(
    embeddings: ArrayLike, labels: Sequence[Hashable] | ArrayLike, k: int = 10, **search_kwargs: Any
) -> float:
    """Leave-one-out retrieval precision: each item queries the rest; the mean fraction of its k nearest
    neighbours (by cosine) that share its label.

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` one label per item (any hashable values).
        k: neighbours per query, ``1 <= k < N``.
    """
    n, _ = _check_collection(embeddings)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ClayInputError(f"labels must have shape ({n},), one per embedding, got {labels.shape}")
    if not 1 <= k < n:
        raise ClayInputError(f"k must be in [1, N) = [1, {n}) (each item is compared with the other N - 1), got {k}")
    _, codes = np.unique(labels, return_inverse=True)
    codes = torch.as_tensor(codes.reshape(-1))  # (N,)
    queries = _as_float_tensor(embeddings[:], "embeddings")  # (N, D)
    self_rows = torch.arange(n)[:, None]  # (N, 1): every query excludes itself
    _, neighbours = _search_excluding(queries, embeddings, k, self_rows, **search_kwargs)  # (N, k)
    neighbours = neighbours.cpu()
    return float((codes[neighbours] == codes[:, None]).float().mean())


# ---------------------------------------------------------------------------------------------- the index


@dataclass(repr=False)
class SearchResult:
    """The hits of one query, best first. Printing it shows a table; :meth:`to_pandas` gives a DataFrame.

    Args:
        scores: ``(k,)`` cosine similarities (centred when the index is).
        indices: ``(k,)`` row positions in the index.
        ids: the ids of those rows.
        metadata: one dict per hit (the index's metadata columns; empty dicts when it has none).
        percentiles: ``(k,)`` each score's percentile (0-100) among the cosines of all pairs of chips of the
            collection (see the module docstring); None where not known.
        query: what was searched (an id, ``"a vector"``, the examples), for the printed table.
        centred: the scores are cosines of centred embeddings.
    """

    scores: torch.Tensor
    indices: torch.Tensor
    ids: list[Hashable]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    percentiles: torch.Tensor | None = None
    query: str | None = None
    centred: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, positions: Sequence[int]) -> SearchResult:
        """The hits at ``positions`` (of this result, 0 = best), every field alike."""
        positions = [int(p) for p in positions]
        rows = torch.as_tensor(positions, dtype=torch.long)
        return dataclasses.replace(
            self,
            scores=self.scores[rows],
            indices=self.indices[rows],
            ids=[self.ids[p] for p in positions],
            metadata=[self.metadata[p] for p in positions] if self.metadata else [],
            percentiles=self.percentiles[rows] if self.percentiles is not None else None,
        )

    def _columns(self) -> dict[str, list[Any]]:
        """rank, id, cosine, percentile, then the metadata columns (a ``chip_id`` equal to the id left out)."""
        n = len(self)
        percentiles = self.percentiles.tolist() if self.percentiles is not None else [float("nan")] * n
        columns: dict[str, list[Any]] = {
            "rank": list(range(1, n + 1)),
            "id": list(self.ids),
            "cosine": [float(s) for s in self.scores],
            "percentile": [float(p) for p in percentiles],
        }
        names = list(dict.fromkeys(name for row in self.metadata for name in row))
        for name in names:
            values = [row.get(name) for row in self.metadata] if self.metadata else [None] * n
            if name in columns or (name == "chip_id" and values == columns["id"]):
                continue
            columns[name] = values
        return columns

    def to_pandas(self):
        """The hits as a ``pandas.DataFrame``: ``rank``, ``id``, ``cosine``, ``percentile`` and the metadata
        columns, the ``geometry`` footprints (WKB in the shards) as shapely geometries in longitude/latitude.

        For a GeoDataFrame: ``geopandas.GeoDataFrame(result.to_pandas(), geometry="geometry", crs="OGC:CRS84")``.
        """
        import pandas as pd

        columns = self._columns()
        if "geometry" in columns:
            columns["geometry"] = _shapely_geometries(columns["geometry"])
        return pd.DataFrame(columns)

    def __repr__(self) -> str:
        kind = "centred cosine" if self.centred else "cosine"
        what = f" for {self.query}" if self.query is not None else ""
        head = f"SearchResult: {len(self)} hit{'s' if len(self) != 1 else ''}{what} ({kind}; percentile: share of the "
        head += "collection's chip pairs that are less alike)"
        every = self._columns()
        empty = {name for name, values in every.items() if all(v is None for v in values) and len(values)}
        columns = {name: values for name, values in every.items() if _is_plain_column(values) and name not in empty}
        shown = {name: values[:_REPR_ROWS] for name, values in columns.items()}
        hidden = [name for name in every if name not in columns and name not in empty]
        lines = [head, *_format_table(shown)]
        if len(self) > _REPR_ROWS:
            lines.append(f"... {len(self) - _REPR_ROWS} more hits")
        if hidden:
            lines.append(f"(not shown: {', '.join(hidden)}; see .to_pandas())")
        return "\n".join(lines)


_REPR_ROWS = 20  # hits printed by repr
_REPR_TEXT = 36  # characters of a text value printed by repr


def _is_plain_column(values: list[Any]) -> bool:
    """Scalars (text, numbers, booleans, None) print in a table; bytes, lists and arrays do not."""
    return all(v is None or isinstance(v, (str, bool, int, float, np.generic)) for v in values)


def _format_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "-"
        if name == "cosine":
            return f"{value:.4f}"
        if name == "percentile":
            return f"{value:.1f}"
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= _REPR_TEXT else text[: _REPR_TEXT - 3] + "..."


def _format_table(columns: dict[str, list[Any]]) -> list[str]:
    """Fixed-width lines: a header, then one line per row; numbers right-aligned, text left-aligned."""
    cells = {name: [_format_value(name, v) for v in values] for name, values in columns.items()}
    numeric = {
        name: all(v is None or isinstance(v, (int, float, np.number)) for v in values)
        for name, values in columns.items()
    }
    widths = {name: max([len(name), *map(len, cells[name])]) for name in cells}

    def line(texts: dict[str, str]) -> str:
        parts = [t.rjust(widths[n]) if numeric[n] else t.ljust(widths[n]) for n, t in texts.items()]
        return "  ".join(parts).rstrip()

    n = len(next(iter(cells.values()), []))
    return [line({name: name for name in cells}), *(line({name: cells[name][i] for name in cells}) for i in range(n))]


def _shapely_geometries(values: Sequence[Any]) -> Any:
    """WKB footprints (bytes or None) -> shapely geometries (None stays None)."""
    if all(v is None for v in values):
        return list(values)
    try:
        import shapely
    except ImportError as exc:
        raise ImportError(
            "to_pandas() turns the WKB footprints of the geometry column into shapely geometries and needs shapely, "
            "which is not installed: pip install shapely (it is in clay_hf[data])"
        ) from exc
    return list(shapely.from_wkb(np.asarray(list(values), dtype=object)))


def _require_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "the approximate index needs FAISS, which is not installed: pip install faiss-cpu "
            "(or faiss-gpu); exact search (EmbeddingIndex.search with use_faiss=False) works without it"
        ) from exc
    return faiss


def _check_max_nodata(max_nodata: float) -> float:
    if isinstance(max_nodata, bool) or not isinstance(max_nodata, (int, float)) or not 0 <= max_nodata <= 1:
        raise ClayInputError(
            f"max_nodata must be a fraction in [0, 1] (the largest share of nodata pixels a chip may hold), got "
            f"{max_nodata!r}; pass e.g. max_nodata={DEFAULT_MAX_NODATA}"
        )
    return float(max_nodata)


class EmbeddingIndex:
    """Embeddings with their ids and metadata, searchable by vector, by id, or by positive/negative examples.

    Args:
        embeddings: ``(N, D)`` numpy array or torch tensor (kept normalised, float32).
        ids: ``N`` distinct ids (chip ids, ...); default the row numbers 0..N-1.
        metadata: per-row information returned with the hits: a mapping of columns (each N long), a sequence
            of N dicts, or a ``datasets.Dataset`` of N rows.
        center: subtract the collection's mean embedding (from the collection and from vector queries) before
            normalising. Embeddings of one model often share a large common direction, which squeezes every
            cosine towards 1; centring spreads them out without changing what is near what.
        nodata_fraction: ``N`` shares of nodata pixels, one per chip; default the metadata's ``nodata_fraction``
            column when it has one (None values count as 0), else 0 for every row. Searches leave rows above their
            ``max_nodata`` out.
    """

    def __init__(
        self,
        embeddings: ArrayLike,
        ids: Sequence[Hashable] | None = None,
        metadata: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | Any | None = None,
        center: bool = False,
        nodata_fraction: Sequence[float] | ArrayLike | None = None,
    ) -> None:
        n, _ = _check_collection(embeddings)
        raw = _as_float_tensor(embeddings, "embeddings")  # (N, D)
        self.center_vector = raw.mean(dim=0) if center else None  # (D,)
        self.embeddings = _normalize(raw - self.center_vector if center else raw)  # (N, D), unit rows
        self.ids: list[Hashable] = list(range(n)) if ids is None else [_plain(i) for i in ids]
        if len(self.ids) != n:
            raise ClayInputError(f"got {len(self.ids)} ids for {n} embeddings; pass one id per row")
        self._row_of = {id_: row for row, id_ in enumerate(self.ids)}
        if len(self._row_of) != n:
            duplicates = sorted({str(i) for i in self.ids if self.ids.count(i) > 1})[:5]
            raise ClayInputError(f"ids must be distinct, got duplicates {duplicates}")
        self._metadata = self._check_metadata(metadata, n)
        self.nodata_fraction = self._check_nodata(nodata_fraction, self._metadata, n)  # (N,) float64
        self.source: str | None = None  # the folder or file :meth:`from_parquet` read
        self._faiss_dataset = None  # a `datasets.Dataset` of row numbers carrying the FAISS index
        self._pair_scores: dict[float, np.ndarray] = {}  # max_nodata -> sorted cosines of pairs of rows

    @classmethod
    def from_dataset(
        cls, dataset: Any, embedding_column: str = "embedding", id_column: str | None = None, center: bool = False
    ):
        """An index over a ``datasets.Dataset`` with an embedding column; the other columns become metadata.

        The defaults fit the rows of :mod:`clay_hf.apps.embeddings` (``embedding``, ``chip_id``): ``id_column=None``
        takes ``chip_id`` when the dataset has it, else the row numbers.
        """
        if id_column is None and "chip_id" in dataset.column_names:
            id_column = "chip_id"
        if embedding_column not in dataset.column_names:
            raise ClayInputError(
                f"dataset has no column {embedding_column!r}; its columns are {dataset.column_names}. "
                "Pass embedding_column="
            )
        if id_column is not None and id_column not in dataset.column_names:
            raise ClayInputError(f"dataset has no id column {id_column!r}; its columns are {dataset.column_names}")
        embeddings = np.asarray(dataset.with_format("numpy")[embedding_column], dtype=np.float32)  # (N, D)
        ids = dataset[id_column] if id_column is not None else None
        return cls(embeddings, ids=ids, metadata=dataset.remove_columns(embedding_column), center=center)

    @classmethod
    def from_parquet(
        cls,
        path: str | os.PathLike,
        split: str | None = "train",
        embedding_column: str = "embedding",
        id_column: str | None = "chip_id",
        center: bool = False,
        revision: str | None = None,
    ) -> EmbeddingIndex:
        """An index over GeoParquet embedding shards, as :func:`clay_hf.apps.embeddings.embed_to_parquet`
        (``scripts/embed.py``) writes them.

        Args:
            path: an embedding folder (``data/<split>/*.parquet``), a folder of Parquet files, one Parquet
                file (a Space collection's ``embeddings.parquet``), or the id of a Hub dataset holding such a
                folder (see :func:`embedding_files`).
            split: the split of an embedding folder; None reads every split.
            revision: of a Hub dataset (a branch, tag or commit); None: the main branch.
            embedding_column: the vectors to search: ``embedding`` (the cls token) or ``mean_embedding``.
            id_column: the ids (``chip_id``); None: the row numbers.
            center: see :class:`EmbeddingIndex`.

        Every other column (except the other vector columns) becomes metadata; ``nodata_fraction`` also sets the
        rows :meth:`search` leaves out (shards written before that column existed count as 0).
        """
        files = embedding_files(path, split, revision=revision)
        vectors, columns, dims, models = [], {}, {}, {}
        count = 0
        for file in files:
            table = _read_shard(file, embedding_column)
            vectors.append(_vectors(table, embedding_column, file))
            dims[file] = vectors[-1].shape[1]
            model = _shard_model(table)
            if model is not None:
                models[file] = model
            for name in table.column_names:
                if name in _VECTOR_COLUMNS:
                    continue
                columns.setdefault(name, [None] * count).extend(table.column(name).to_pylist())
            count += table.num_rows
            for values in columns.values():  # a column missing from this shard (an older one): None
                values.extend([None] * (count - len(values)))
        if len(set(dims.values())) > 1:
            first, other = files[0], next(f for f in files if dims[f] != dims[files[0]])
            raise ClayInputError(
                f"the shards under {path} hold embeddings of different widths: {dims[first]} in {first}, "
                f"{dims[other]} in {other}; an index needs one model's embeddings. Read the folders one at a time"
            )
        if len(set(models.values())) > 1:
            first, other = next(iter(models)), next(f for f in models if models[f] != next(iter(models.values())))
            raise ClayInputError(
                f"the shards under {path} were embedded by different models (fingerprint {models[first][:12]} in "
                f"{first}, {models[other][:12]} in {other}); their cosines do not compare. Read one model's shards"
            )
        if id_column is not None and id_column not in columns:
            raise ClayInputError(
                f"{files[0]} has no id column {id_column!r}; its columns are {sorted(columns)}. Pass id_column= "
                "(None: the row numbers)"
            )
        ids = columns[id_column] if id_column is not None else None
        index = cls(np.concatenate(vectors), ids=ids, metadata=columns or None, center=center)
        index.source = os.fspath(path)
        logger.info("read %d embeddings of width %d from %d shard(s) under %s", count, dims[files[0]], len(files), path)
        return index

    @staticmethod
    def _check_metadata(metadata: Any, n: int) -> Any:
        if metadata is None:
            return None
        if isinstance(metadata, Mapping):
            lengths = {name: len(column) for name, column in metadata.items()}
            if any(length != n for length in lengths.values()):
                raise ClayInputError(f"every metadata column must have {n} values (one per row), got {lengths}")
            return {name: list(column) for name, column in metadata.items()}
        if len(metadata) != n:
            raise ClayInputError(f"metadata must have {n} rows (one per embedding), got {len(metadata)}")
        return metadata  # a sequence of dicts or a datasets.Dataset: both give a dict per row

    @staticmethod
    def _check_nodata(nodata_fraction: Any, metadata: Any, n: int) -> np.ndarray:
        if nodata_fraction is None:
            if isinstance(metadata, dict):
                nodata_fraction = metadata.get("nodata_fraction")
            elif "nodata_fraction" in (getattr(metadata, "column_names", None) or ()):  # a datasets.Dataset
                nodata_fraction = metadata["nodata_fraction"]
            elif metadata is not None and not hasattr(metadata, "column_names"):
                nodata_fraction = [row.get("nodata_fraction") for row in metadata]
        if nodata_fraction is None:
            return np.zeros(n)
        values = np.array([np.nan if v is None else float(v) for v in np.asarray(nodata_fraction, dtype=object)])
        if values.shape != (n,):
            raise ClayInputError(f"nodata_fraction must have {n} values (one per row), got shape {values.shape}")
        return np.nan_to_num(values, nan=0.0)  # unknown (an older shard): counted as complete

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        n, d = self.embeddings.shape
        parts = [f"{n} embeddings of width {d}", "centred cosine" if self.center_vector is not None else "cosine",
                 "FAISS index" if self.has_faiss_index else "exact search"]  # fmt: skip
        above = int((self.nodata_fraction > DEFAULT_MAX_NODATA).sum())
        if above:
            parts.append(f"{above} with more than {DEFAULT_MAX_NODATA:.0%} nodata left out of results")
        names = self.metadata_columns
        if names:
            shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            parts.append(f"metadata: {shown}")
        if self.source is not None:
            parts.append(f"from {self.source}")
        return f"EmbeddingIndex({'; '.join(parts)})"

    @property
    def metadata_columns(self) -> list[str]:
        """The names of the metadata columns (empty when the index has none)."""
        if self._metadata is None:
            return []
        if isinstance(self._metadata, dict):
            return list(self._metadata)
        if hasattr(self._metadata, "column_names"):  # a datasets.Dataset
            return list(self._metadata.column_names)
        return list(dict.fromkeys(name for row in self._metadata for name in row))

    def metadata(self, row: int) -> dict[str, Any]:
        """The metadata of one row (an empty dict when the index has none)."""
        if self._metadata is None:
            return {}
        if isinstance(self._metadata, dict):
            return {name: column[row] for name, column in self._metadata.items()}
        return dict(self._metadata[row])

    def to_pandas(self):
        """Every row as a ``pandas.DataFrame``: ``id``, ``nodata_fraction`` and the metadata columns (no vectors),
        the ``geometry`` footprints as shapely geometries."""
        import pandas as pd

        columns: dict[str, list[Any]] = {"id": list(self.ids), "nodata_fraction": self.nodata_fraction.tolist()}
        if isinstance(self._metadata, dict):
            metadata = self._metadata
        elif self._metadata is not None:
            rows = [self.metadata(r) for r in range(len(self))]
            metadata = {name: [row.get(name) for row in rows] for name in self.metadata_columns}
        else:
            metadata = {}
        for name, values in metadata.items():
            if name in columns or (name == "chip_id" and list(values) == columns["id"]):
                continue
            columns[name] = list(values)
        if "geometry" in columns:
            columns["geometry"] = _shapely_geometries(columns["geometry"])
        return pd.DataFrame(columns)

    def rows(self, ids: Hashable | Sequence[Hashable]) -> list[int]:
        """Row positions of ids (one id or a list of them)."""
        ids = [ids] if _is_single_id(ids) else list(ids)
        rows = []
        for id_ in ids:
            row = self._row_of.get(_plain(id_))
            if row is None:
                close = difflib.get_close_matches(str(id_), [str(i) for i in self.ids[:100000]], n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ClayInputError(f"id {id_!r} is not in the index of {len(self)} embeddings{hint}")
            rows.append(row)
        return rows

    def _check_query_rows(self, rows: list[int], max_nodata: float, what: str) -> None:
        """Refuse a query (or positive example) chip with more nodata than ``max_nodata``."""
        for row in rows:
            fraction = float(self.nodata_fraction[row])
            if fraction > max_nodata:
                raise ClayInputError(
                    f"{what} {self.ids[row]!r} is {fraction:.0%} nodata, more than max_nodata={max_nodata} allows: "
                    "its embedding mostly describes the fill, so it would find other chips with nodata rather than "
                    "what it shows. Choose a chip with less nodata, or pass a larger max_nodata= (which also lets "
                    "chips with that much nodata into the results)"
                )

    def _to_queries(
        self, query_or_ids: Any, max_nodata: float | None = None, what: str = "query chip"
    ) -> tuple[torch.Tensor, bool]:
        """Vectors pass through (normalised); ids are looked up (and, with ``max_nodata``, refused when they hold
        more nodata). Returns ``(Q, D)`` and whether it was one query."""
        if _is_vector(query_or_ids):
            queries, single = _check_queries(query_or_ids, self.embeddings.shape[1])
            if self.center_vector is not None:
                queries = queries - self.center_vector
            return _normalize(queries), single
        single = _is_single_id(query_or_ids)
        rows = self.rows(query_or_ids)
        if max_nodata is not None:
            self._check_query_rows(rows, max_nodata, what)
        return self.embeddings[rows], single  # (Q, D)

    def _excluded_rows(self, max_nodata: float) -> set[int]:
        """Rows with more nodata than ``max_nodata``: never returned."""
        excluded = set(np.flatnonzero(self.nodata_fraction > max_nodata).tolist())
        if len(excluded) == len(self):
            raise ClayInputError(
                f"every one of the {len(self)} chips of the index has more than max_nodata={max_nodata} nodata, so "
                "no chip can be returned; pass a larger max_nodata="
            )
        return excluded

    def percentiles(self, scores: ArrayLike | Sequence[float], max_nodata: float = DEFAULT_MAX_NODATA) -> np.ndarray:
        """Cosine scores (of this index: centred when it is) -> their percentiles (0-100) among the cosines of
        all pairs of the collection's chips with at most ``max_nodata`` nodata (see the module docstring).

        NaN when fewer than two chips qualify.
        """
        max_nodata = _check_max_nodata(max_nodata)
        reference = self._pair_scores.get(max_nodata)
        if reference is None:
            rows = np.flatnonzero(self.nodata_fraction <= max_nodata)
            if len(rows) > PERCENTILE_SAMPLE_ROWS:  # a fixed sample: the same percentiles on every call
                rows = np.sort(np.random.default_rng(0).choice(rows, PERCENTILE_SAMPLE_ROWS, replace=False))
            vectors = self.embeddings[torch.as_tensor(rows, dtype=torch.long)]  # (m, D)
            gram = vectors @ vectors.T  # (m, D) x (D, m) -> (m, m)
            upper = torch.ones_like(gram, dtype=torch.bool).triu(diagonal=1)  # each pair once, no self-pairs
            reference = np.sort(gram[upper].cpu().numpy())  # (m (m - 1) / 2,)
            self._pair_scores[max_nodata] = reference
        scores = np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float32)
        if len(reference) == 0:
            return np.full(scores.shape, np.nan)
        return 100.0 * np.searchsorted(reference, scores, side="right") / len(reference)

    @property
    def has_faiss_index(self) -> bool:
        return self._faiss_dataset is not None

    def build_faiss_index(
        self, string_factory: str | None = None, train_size: int | None = None, device: int | None = None
    ) -> None:
        """Build an (approximate) FAISS index through ``datasets``' FAISS support; later searches use it.

        Args:
            string_factory: a FAISS index factory string, e.g. ``"HNSW32"`` (graph, no training) or
                ``"IVF256,Flat"`` (needs ``train_size``); None: an exact flat inner-product index.
            train_size: how many vectors train the index, for index types that need training.
            device: a GPU number for faiss-gpu, or None for the CPU.
        """
        faiss = _require_faiss()
        from datasets import Dataset

        dataset = Dataset.from_dict({"row": np.arange(len(self))})
        dataset.add_faiss_index_from_external_arrays(
            self.embeddings.cpu().numpy(),
            index_name=_FAISS_INDEX_NAME,
            string_factory=string_factory,
            metric_type=faiss.METRIC_INNER_PRODUCT,  # inner product of unit vectors = cosine
            train_size=train_size,
            device=device,
        )
        self._faiss_dataset = dataset
        logger.info("built a FAISS index (%s) over %d embeddings", string_factory or "Flat", len(self))

    def _raw_search(self, queries: torch.Tensor, k: int, use_faiss: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """``(Q, D)`` unit queries -> ``(Q, k)`` scores and rows (-1 where FAISS found fewer than k)."""
        if use_faiss is None:
            use_faiss = self.has_faiss_index
        if use_faiss and not self.has_faiss_index:
            _require_faiss()
            raise ClayInputError("use_faiss=True but no FAISS index was built; call build_faiss_index() first")
        k = min(k, len(self))
        if use_faiss:
            found = self._faiss_dataset.search_batch(_FAISS_INDEX_NAME, queries.cpu().numpy().astype(np.float32), k=k)
            return np.asarray(found.total_scores), np.asarray(found.total_indices)
        scores, rows = cosine_search(queries, self.embeddings, k=k, normalized=True)
        return scores.cpu().numpy(), rows.cpu().numpy()

    def _results(
        self, scores: np.ndarray, rows: np.ndarray, k: int, exclude: set[int], max_nodata: float, queries: list[str]
    ) -> list[SearchResult]:
        results = []
        for row_scores, row_rows, query in zip(scores, rows, queries):
            keep = [i for i, r in enumerate(row_rows) if r >= 0 and int(r) not in exclude][:k]
            hit_rows = [int(row_rows[i]) for i in keep]
            hit_scores = torch.as_tensor(row_scores[keep], dtype=torch.float32)
            results.append(
                SearchResult(
                    scores=hit_scores,
                    indices=torch.as_tensor(hit_rows, dtype=torch.long),
                    ids=[self.ids[r] for r in hit_rows],
                    metadata=[self.metadata(r) for r in hit_rows],
                    percentiles=torch.as_tensor(self.percentiles(hit_scores, max_nodata), dtype=torch.float32),
                    query=query,
                    centred=self.center_vector is not None,
                )
            )
        return results

    def search(
        self,
        query_or_ids: Any,
        k: int = 10,
        use_faiss: bool | None = None,
        max_nodata: float = DEFAULT_MAX_NODATA,
    ) -> SearchResult | list[SearchResult]:
        """Nearest neighbours by cosine similarity.

        Args:
            query_or_ids: a float ``(D,)`` vector or ``(Q, D)`` vectors, one id, or a list of ids (each id
                queries with its own embedding, so it comes back first).
            k: hits per query.
            use_faiss: search the FAISS index (None: when one was built).
            max_nodata: chips with a larger ``nodata_fraction`` are never returned, and a query id with one is
                refused (1.0: no filter). A query vector's nodata is the caller's to check.
        Returns:
            a :class:`SearchResult` for one query, a list of them for several.
        """
        max_nodata = _check_max_nodata(max_nodata)
        queries, single = self._to_queries(query_or_ids, max_nodata)
        excluded = self._excluded_rows(max_nodata)
        scores, rows = self._raw_search(queries, k + len(excluded), use_faiss)
        if _is_vector(query_or_ids):
            labels = ["a vector"] * len(queries)
        else:
            labels = [repr(i) for i in ([query_or_ids] if single else list(query_or_ids))]
        results = self._results(scores, rows, k, excluded, max_nodata, labels)
        return results[0] if single else results

    def search_examples(
        self,
        positive: Any,
        negative: Any | None = None,
        k: int = 10,
        alpha: float = 1.0,
        beta: float = 0.5,
        exclude_examples: bool = True,
        use_faiss: bool | None = None,
        max_nodata: float = DEFAULT_MAX_NODATA,
    ) -> SearchResult:
        """Search with a query refined from positive and negative examples (see :func:`refine_query`).

        Args:
            positive, negative: ids of examples in the index (one or a list), or float ``(P, D)`` vectors.
            exclude_examples: leave the example ids out of the hits.
            max_nodata: as in :meth:`search`; positive example ids with more nodata are refused (negative ones
                are not: steering away from fill does no harm).
        """
        max_nodata = _check_max_nodata(max_nodata)
        pos = self._to_queries(positive, max_nodata, what="positive example")[0]  # (P, D)
        neg = self._to_queries(negative)[0] if negative is not None else None  # (M, D)
        query = refine_query(pos, neg, alpha=alpha, beta=beta)  # (D,)
        exclude = self._excluded_rows(max_nodata)
        if exclude_examples:
            for examples in (positive, negative):
                if examples is not None and not _is_vector(examples):
                    exclude.update(self.rows(examples))
        scores, rows = self._raw_search(query[None], k + len(exclude), use_faiss)
        label = f"examples (+{len(pos)}, -{0 if neg is None else len(neg)})"
        return self._results(scores, rows, k, exclude, max_nodata, [label])[0]


def embedding_files(path: str | os.PathLike, split: str | None = "train", revision: str | None = None) -> list[Path]:
    """The Parquet shards of an embedding folder (one split, or every split with ``split=None``), of a folder of
    Parquet files or ``[path]`` for one file, in the order :meth:`EmbeddingIndex.from_parquet` reads them.

    ``path`` may also be a Hub dataset id (``owner/name``, when no such local path exists): its ``*.parquet`` files
    and ``embedding_info.json`` are downloaded into the Hugging Face cache (``huggingface_hub.snapshot_download``,
    the download ``datasets`` does too; a second call reads the cache) and read as a local folder.
    """
    local = Path(path)
    text = os.fspath(path)
    if not local.exists() and _HUB_ID.fullmatch(text) and not text.startswith("."):
        local = _hub_folder(text, revision)
    return _parquet_files(local, split)


def _hub_folder(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of a Hub dataset's Parquet shards and embedding record."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, repo_type="dataset", revision=revision, allow_patterns=["*.parquet", "embedding_info.json"]
        )
    except OSError as err:  # not found, gated, offline without a cached copy, a network error
        raise ClayInputError(
            f"{repo_id!r} is not a local path, and as a Hub dataset id it could not be fetched "
            f"({type(err).__name__}: {err}). Pass an embedding folder, or a Hub dataset id you can read"
        ) from err
    return Path(folder)


def _parquet_files(path: Path, split: str | None) -> list[Path]:
    """The Parquet shards of an embedding folder's split, of a plain folder, or ``[path]`` for one file."""
    expected = (
        "pass an embedding folder written by embed_to_parquet (scripts/embed.py), a folder of Parquet files or one "
        ".parquet file"
    )
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ClayInputError(f"{path} does not exist; {expected}")
    data = path / "data"
    if data.is_dir():
        splits = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
        if split is not None and split not in splits:
            raise ClayInputError(
                f"{path} has no split {split!r}; its splits are {splits}. Pass split= (None reads every split)"
            )
        folders = [data / s for s in (splits if split is None else [split])]
    else:
        folders = [path]
    files = sorted(f for folder in folders for f in folder.glob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise ClayInputError(f"{path} holds no Parquet files (*.parquet); {expected}")
    return files


def _read_shard(file: Path, embedding_column: str):
    """One shard as an Arrow table, without the vector columns other than ``embedding_column``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(file).names
        if embedding_column not in names:
            present = [c for c in names if c in _VECTOR_COLUMNS]
            raise ClayInputError(
                f"{file} has no column {embedding_column!r}; its vector columns are {present} (the --outputs it was "
                f"embedded with). Pass embedding_column= one of them"
            )
        keep = [c for c in names if c == embedding_column or c not in _VECTOR_COLUMNS + _PER_PATCH_COLUMNS]
        return pq.read_table(file, columns=keep)
    except (OSError, pa.ArrowException) as err:
        raise ClayInputError(
            f"{file} cannot be read as Parquet ({err}): it is truncated, damaged or not a Parquet file. Run "
            "scripts/embed.py on the same input and output again: it embeds damaged shards anew"
        ) from err


def _vectors(table, column: str, file: Path) -> np.ndarray:
    """A list<float> column of equal-length rows -> ``(N, D)`` float32."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = table.column(column).combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)) or not pa.types.is_floating(
        array.type.value_type
    ):
        raise ClayInputError(
            f"column {column!r} of {file} holds {array.type}, not one vector per chip (list of floats); pass "
            "embedding_column='embedding' or 'mean_embedding'"
        )
    if array.null_count:
        raise ClayInputError(f"column {column!r} of {file} has {array.null_count} empty rows; embed the input again")
    lengths = np.unique(pc.list_value_length(array).to_numpy()) if len(array) else np.array([0])
    if len(lengths) != 1 or lengths[0] == 0:
        raise ClayInputError(f"column {column!r} of {file} holds vectors of lengths {lengths.tolist()}, not one width")
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(array), int(lengths[0]))


def _shard_model(table) -> str | None:
    """The model fingerprint a shard of :func:`clay_hf.apps.embeddings.write_embedding_shard` records, if any."""
    raw = (table.schema.metadata or {}).get(b"clay_embeddings")
    if raw is None:
        return None
    try:
        return (json.loads(raw).get("model") or {}).get("fingerprint")
    except (ValueError, AttributeError):
        return None


def _plain(value: Any) -> Hashable:
    """numpy and torch scalars -> Python scalars, so ids compare and hash as users expect."""
    return value.item() if isinstance(value, (np.generic, torch.Tensor)) else value


def _is_vector(value: Any) -> bool:
    """Float arrays and tensors are query vectors; anything else is ids."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    return isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)


def _is_single_id(value: Any) -> bool:
    if isinstance(value, (str, bytes)) or np.isscalar(value):
        return True
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0
