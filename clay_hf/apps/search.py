"""Similarity search over Clay embeddings: exact cosine search, search by examples, and evaluation.

    >>> scores, indices = cosine_search(query, embeddings, k=5)             # (D,) against (N, D)
    >>> index = EmbeddingIndex(embeddings, ids=chip_ids, metadata={"lat": lats, "lon": lons})
    >>> hits = index.search("s2/0_32", k=10)                                # by id, or by a (D,) vector
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
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ClayInputError

__all__ = [
    "cosine_search",
    "refine_query",
    "search_by_examples",
    "precision_at_k",
    "SearchResult",
    "EmbeddingIndex",
]

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
DEFAULT_BATCH_SIZE = 65536  # collection rows per matrix product
DEFAULT_QUERY_BATCH_SIZE = 4096  # queries per matrix product
_FAISS_INDEX_NAME = "embedding"


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


@dataclass
class SearchResult:
    """The hits of one query, best first.

    Args:
        scores: ``(k,)`` cosine similarities.
        indices: ``(k,)`` row positions in the index.
        ids: the ids of those rows.
        metadata: one dict per hit (the index's metadata columns; empty dicts when it has none).
    """

    scores: torch.Tensor
    indices: torch.Tensor
    ids: list[Hashable]
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _require_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "the approximate index needs FAISS, which is not installed: pip install faiss-cpu "
            "(or faiss-gpu); exact search (EmbeddingIndex.search with use_faiss=False) works without it"
        ) from exc
    return faiss


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
    """

    def __init__(
        self,
        embeddings: ArrayLike,
        ids: Sequence[Hashable] | None = None,
        metadata: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | Any | None = None,
        center: bool = False,
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
        self._faiss_dataset = None  # a `datasets.Dataset` of row numbers carrying the FAISS index

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

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        n, d = self.embeddings.shape
        return f"EmbeddingIndex(n={n}, dim={d}, faiss={self.has_faiss_index})"

    def metadata(self, row: int) -> dict[str, Any]:
        """The metadata of one row (an empty dict when the index has none)."""
        if self._metadata is None:
            return {}
        if isinstance(self._metadata, dict):
            return {name: column[row] for name, column in self._metadata.items()}
        return dict(self._metadata[row])

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

    def _to_queries(self, query_or_ids: Any) -> tuple[torch.Tensor, bool]:
        """Vectors pass through (normalised); ids are looked up. Returns ``(Q, D)`` and whether it was one query."""
        if _is_vector(query_or_ids):
            queries, single = _check_queries(query_or_ids, self.embeddings.shape[1])
            if self.center_vector is not None:
                queries = queries - self.center_vector
            return _normalize(queries), single
        single = _is_single_id(query_or_ids)
        return self.embeddings[self.rows(query_or_ids)], single  # (Q, D)

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

    def _results(self, scores: np.ndarray, rows: np.ndarray, k: int, exclude: set[int]) -> list[SearchResult]:
        results = []
        for row_scores, row_rows in zip(scores, rows):
            keep = [i for i, r in enumerate(row_rows) if r >= 0 and int(r) not in exclude][:k]
            hit_rows = [int(row_rows[i]) for i in keep]
            results.append(
                SearchResult(
                    scores=torch.as_tensor(row_scores[keep], dtype=torch.float32),
                    indices=torch.as_tensor(hit_rows, dtype=torch.long),
                    ids=[self.ids[r] for r in hit_rows],
                    metadata=[self.metadata(r) for r in hit_rows],
                )
            )
        return results

    def search(
        self, query_or_ids: Any, k: int = 10, use_faiss: bool | None = None
    ) -> SearchResult | list[SearchResult]:
        """Nearest neighbours by cosine similarity.

        Args:
            query_or_ids: a float ``(D,)`` vector or ``(Q, D)`` vectors, one id, or a list of ids (each id
                queries with its own embedding, so it comes back first).
            k: hits per query.
            use_faiss: search the FAISS index (None: when one was built).
        Returns:
            a :class:`SearchResult` for one query, a list of them for several.
        """
        queries, single = self._to_queries(query_or_ids)
        scores, rows = self._raw_search(queries, k, use_faiss)
        results = self._results(scores, rows, k, exclude=set())
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
    ) -> SearchResult:
        """Search with a query refined from positive and negative examples (see :func:`refine_query`).

        Args:
            positive, negative: ids of examples in the index (one or a list), or float ``(P, D)`` vectors.
            exclude_examples: leave the example ids out of the hits.
        """
        pos = self._to_queries(positive)[0]  # (P, D)
        neg = self._to_queries(negative)[0] if negative is not None else None  # (M, D)
        query = refine_query(pos, neg, alpha=alpha, beta=beta)  # (D,)
        exclude: set[int] = set()
        if exclude_examples:
            for examples in (positive, negative):
                if examples is not None and not _is_vector(examples):
                    exclude.update(self.rows(examples))
        scores, rows = self._raw_search(query[None], k + len(exclude), use_faiss)
        return self._results(scores, rows, k, exclude)[0]


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
