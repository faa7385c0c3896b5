"""The embed and index stages end to end on a tiny world: every method, checked, written, logged; refusals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import tiny_genrec
from genrec.data.sequences import read_titles
from genrec.config.params import IndexParams
from genrec.errors import DataError
from genrec.indexing.codes import CODES_FILE, STATS_FILE, ItemCodes, check_codes
from genrec.stages import embed, index

METHODS = ("random", "sequential", "collaborative", "semantic")


def tiny_params(tmp, **index_overrides):
    params = tiny_genrec.params(tmp)
    settings = dict(levels=2, codebook_size=4, cluster_levels=2, clusters=3, embedding_batch=5)
    return dataclasses.replace(params, index=IndexParams(**{**settings, **index_overrides}))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    processed = tiny_genrec.write_split(tmp / "processed")
    base = tiny_genrec.write_backbone(tmp / "base")
    params = tiny_params(tmp)
    embedded = embed.run(params, processed_dir=processed, base_dir=base, out_dir=tmp / "embeddings")
    result = index.run(params, processed_dir=processed, embeddings_dir=tmp / "embeddings", out_dir=tmp / "index",
                       metrics_path=tmp / "index_stats.json")
    return tmp, params, embedded, result


def test_embeddings_cover_the_catalogue_in_item_order(built):
    tmp, _, embedded, _ = built
    items, vectors = embed.read_embeddings(tmp / "embeddings")
    meta = json.loads((tmp / "embeddings" / embed.META_FILE).read_text())
    assert items == sorted(read_titles(tmp / "processed"))
    assert vectors.shape == (len(items), meta["width"]) and vectors.dtype == np.float32
    assert embedded["items"] == len(items) and np.isfinite(vectors).all()


def test_every_method_names_every_item_once(built):
    tmp, _, _, result = built
    items, _ = embed.read_embeddings(tmp / "embeddings")
    stats = json.loads((tmp / "index_stats.json").read_text())
    assert sorted(stats) == sorted(METHODS) and result["stats"] == stats
    for method in METHODS:
        codes = ItemCodes.load(tmp / "index" / method)
        assert codes.method == method
        check_codes(codes, items, tmp / "index" / method / CODES_FILE)
        timeless = {k: v for k, v in stats[method].items() if k != "seconds"}
        assert json.loads((tmp / "index" / method / STATS_FILE).read_text()) == timeless  # a rebuild: same bytes
        assert stats[method]["items"] == len(items)
    assert stats["semantic"]["depth"] == 3 and stats["collaborative"]["depth"] == 3  # 2 levels + the last code
    assert stats["random"]["depth"] == 1 and stats["sequential"]["leaky"] and not stats["semantic"]["leaky"]


def test_the_same_seed_builds_the_same_codes(built, tmp_path):
    tmp, params, _, _ = built
    again = index.run(params, processed_dir=tmp / "processed", embeddings_dir=tmp / "embeddings",
                      out_dir=tmp_path / "index", metrics_path=tmp_path / "stats.json")
    for method in METHODS:
        assert ItemCodes.load(tmp_path / "index" / method) == ItemCodes.load(tmp / "index" / method)
    assert {m: {k: v for k, v in s.items() if k != "seconds"} for m, s in again["stats"].items()} == \
        {m: {k: v for k, v in s.items() if k != "seconds"} for m, s in built[3]["stats"].items()}


def test_stats_are_logged_to_an_index_run(built):
    from mlflow.tracking import MlflowClient

    tmp, params, _, _ = built
    client = MlflowClient(params.tracking.uri)
    experiment = client.get_experiment_by_name(f"genrec-{params.dataset}")
    runs = client.search_runs([experiment.experiment_id], "tags.`genrec.family` = 'index'")
    assert runs
    run = runs[0]
    assert run.data.params["index.codebook_size"] == "4" and run.data.params["dataset"] == params.dataset
    assert run.data.metrics["semantic.collision_rate"] >= 0 and "collaborative.levels.a.entropy_bits" in run.data.metrics


def test_missing_embeddings_are_refused_before_anything_is_written(built, tmp_path):
    tmp, params, _, _ = built
    with pytest.raises(DataError, match="needs title embeddings"):
        index.run(params, processed_dir=tmp / "processed", embeddings_dir=None, out_dir=tmp_path / "index",
                  metrics_path=tmp_path / "stats.json")
    assert not (tmp_path / "index").exists() and not (tmp_path / "stats.json").exists()
    only_one_code = dataclasses.replace(params, index=dataclasses.replace(params.index, methods=["random"],
                                                                          p5=["random"]))
    index.run(only_one_code, processed_dir=tmp / "processed", embeddings_dir=None, out_dir=tmp_path / "index",
              metrics_path=tmp_path / "stats.json")  # no semantic index: no embeddings needed
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["random"]
