"""The ingest stage end to end: mirror, local reuse, download from a URL, checksums and atomic outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import pandas as pd
import pytest

from genrec.errors import DataError
from genrec.config.params import IngestParams, Params
from genrec.stages import ingest

GENERIC = {"interactions.csv": "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\n", "items.csv": "item_id,title\na,A\nb,B\n"}


def params(dataset="ml-latest-small", **ingest_fields) -> Params:
    return Params(dataset=dataset, ingest=IngestParams(**ingest_fields))


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_mirror_then_local_on_real_ml_latest_small(tmp_path, data_mirror):
    raw, out = tmp_path / "raw" / "ml-latest-small", tmp_path / "interim" / "ml-latest-small"
    written = ingest.run(params(), raw_dir=raw, out_dir=out, mirror=data_mirror)

    assert sorted(p.name for p in written.values()) == ["interactions.parquet", "items.parquet", "manifest.json"]
    first = manifest(out)
    assert first["source"] == "mirror" and first["format"] == "movielens"
    assert first["rows"] == {"interactions": 100836, "items": 9742, "users": 610}
    sums = (data_mirror / "ml-latest-small" / "SHA256SUMS").read_text()
    assert first["files"]["ratings.csv"] in sums and first["files"]["movies.csv"] in sums
    interactions = pd.read_parquet(out / "interactions.parquet")
    assert interactions.columns.tolist() == ["user_id", "item_id", "timestamp", "rating"]
    assert interactions.iloc[0].tolist() == ["1", "1", 964982703, 4.0]  # first line of ratings.csv
    assert str(interactions["timestamp"].dtype) == "int64"
    items = pd.read_parquet(out / "items.parquet")
    assert not items["title"].str.contains("&amp;|  ").any()

    ingest.run(params(), raw_dir=raw, out_dir=out, mirror=tmp_path / "no-mirror")
    assert manifest(out)["source"] == "local" and manifest(out)["rows"] == first["rows"]


def test_mirror_checksum_mismatch_is_refused_and_nothing_written(tmp_path, data_mirror):
    mirror = tmp_path / "mirror"
    shutil.copytree(data_mirror / "ml-latest-small", mirror / "ml-latest-small")
    ratings = mirror / "ml-latest-small" / "ratings.csv"
    ratings.chmod(0o644)
    with open(ratings, "ab") as f:
        f.write(b"1,1,4.0,964982703\r\n")
    raw, out = tmp_path / "raw", tmp_path / "out"
    with pytest.raises(DataError, match=r"ratings.csv: sha256 [0-9a-f]{64} differs from aa289ca8") as caught:
        ingest.run(params(), raw_dir=raw, out_dir=out, mirror=mirror)
    assert "restore it" in caught.value.fix
    assert not raw.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]  # no temporary leftovers either


def test_failing_ingest_leaves_no_output_and_keeps_the_previous_one(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for name, text in GENERIC.items():
        (raw / name).write_text(text)
    (raw / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,a,1\nu1,zzz,2\n")
    with pytest.raises(DataError, match=r"interactions.csv, row 3, column 'item_id': item 'zzz'"):
        ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    assert not out.exists()

    (raw / "interactions.csv").write_text(GENERIC["interactions.csv"])
    ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    before = (out / "interactions.parquet").read_bytes()
    (raw / "items.csv").write_text("item_id,title\na,A\nb,\n")
    with pytest.raises(DataError, match="has no title"):
        ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    assert (out / "interactions.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def zipped_generic(tmp_path):
    archive = tmp_path / "my-data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, text in GENERIC.items():
            z.writestr(f"my-data/{name}", text)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_download_from_url_extracts_and_records_hash(tmp_path):
    archive, digest = zipped_generic(tmp_path)
    raw, out = tmp_path / "raw", tmp_path / "out"
    ingest.run(params("my-data", url=archive.as_uri()), raw_dir=raw, out_dir=out, mirror=None)
    assert sorted(p.name for p in raw.iterdir()) == ["interactions.csv", "items.csv"]  # the zip is removed
    record = manifest(out)
    assert record["source"] == "url" and record["format"] == "generic"
    assert record["downloads"] == [{"url": archive.as_uri(), "sha256": digest, "verified": False}]

    shutil.rmtree(raw)
    ingest.run(params("my-data", url=archive.as_uri(), sha256=digest), raw_dir=raw, out_dir=out, mirror=None)
    assert manifest(out)["downloads"][0]["verified"] is True


def test_download_checksum_mismatch_leaves_no_raw_dir(tmp_path):
    archive, _ = zipped_generic(tmp_path)
    raw, out = tmp_path / "raw", tmp_path / "out"
    with pytest.raises(DataError, match="differs from the expected"):
        ingest.run(params("my-data", url=str(archive), sha256="0" * 64), raw_dir=raw, out_dir=out, mirror=None)
    assert not raw.exists() and not out.exists()


def test_no_source_and_incomplete_raw_dir_are_refused(tmp_path):
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="no files for dataset 'my-data'.*set ingest.url"):
        ingest.run(params("my-data"), raw_dir=raw, out_dir=tmp_path / "out", mirror=tmp_path)
    raw.mkdir()
    (raw / "interactions.csv").write_text(GENERIC["interactions.csv"])
    with pytest.raises(DataError, match="holds files, but not"):
        ingest.run(params("my-data"), raw_dir=raw, out_dir=tmp_path / "out", mirror=None)
    assert (raw / "interactions.csv").exists()  # never deleted


@pytest.mark.parametrize("name, text, message", [
    ("interactions.csv", "user_id,item_id,timestamp\n", r"interactions.csv: no interactions"),
    ("interactions.csv", "", r"interactions.csv"),
    ("items.csv", "item_id,title\n", r"items.csv"),
])
def test_an_empty_file_is_refused_and_the_previous_output_kept(tmp_path, name, text, message):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for file, content in GENERIC.items():
        (raw / file).write_text(content)
    ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (raw / name).write_text(text)
    with pytest.raises(DataError, match=message):
        ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_huge_title_is_cut_at_a_word_boundary_and_counted(tmp_path):
    from genrec.data.tables import MAX_TITLE_CHARS

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    huge = "word " * 400_000  # 2 MB
    (raw / "interactions.csv").write_text(GENERIC["interactions.csv"])
    (raw / "items.csv").write_text(f'item_id,title\na,A\nb,"{huge}"\n')
    ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    titles = pd.read_parquet(out / "items.parquet").set_index("item_id")["title"]
    assert titles["a"] == "A"
    assert len(titles["b"]) <= MAX_TITLE_CHARS and titles["b"].endswith("word") and huge.startswith(titles["b"])
    assert manifest(out)["titles_truncated"] == 1 and manifest(out)["max_title_chars"] == MAX_TITLE_CHARS


@pytest.mark.parametrize("invisible", ["\u200b", "\u200b\u200d\ufeff", "\u2060 \u00a0"])
def test_an_invisible_title_is_refused_naming_the_row_or_dropped(tmp_path, invisible):
    """A zero-width-space title was accepted; now it is an empty title: refused at its row, or dropped."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu1,c,3\n", encoding="utf-8")
    (raw / "items.csv").write_text(f"item_id,title\na,A\nb,{invisible}\nc,C\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"items.csv, row 3, column 'title': item 'b' has no title"):
        ingest.run(params("my-data"), raw_dir=raw, out_dir=tmp_path / "out", mirror=None)
    ingest.run(params("my-data", drop_untitled=True), raw_dir=raw, out_dir=tmp_path / "out", mirror=None)
    assert list(pd.read_parquet(tmp_path / "out" / "items.parquet")["title"]) == ["A", "C"]


def test_nfc_and_nfd_forms_of_a_title_become_one_title_and_are_counted(tmp_path):
    import unicodedata

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    title = "Amélie (2001)"
    (raw / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu1,c,3\n", encoding="utf-8")
    (raw / "items.csv").write_text(f"item_id,title\na,{unicodedata.normalize('NFC', title)}\n"
                                   f"b,{unicodedata.normalize('NFD', title)}\nc,C\n", encoding="utf-8")
    ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    titles = list(pd.read_parquet(out / "items.parquet")["title"])
    assert titles == [unicodedata.normalize("NFC", title)] * 2 + ["C"]
    assert manifest(out)["titles_nfc"] == {"changed": 1, "merged": 1}
    (raw / "items.csv").write_text("item_id,title\na,A\nb,B\nc,C\n", encoding="utf-8")
    shutil.rmtree(out)
    ingest.run(params("my-data"), raw_dir=raw, out_dir=out, mirror=None)
    assert "titles_nfc" not in manifest(out)  # a catalogue already in NFC: the manifest as before
