"""Download, checksum and archive handling, on local files (the official URLs need internet)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from genrec.data.datasets import KNOWN, dataset_source, extract_zip, fetch, read_sha256sums
from genrec.errors import DataError
from genrec.io import sha256_file


def test_fetch_copies_local_path_and_file_url_and_checks_sha256(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"x" * 3_000_000)  # several 1 MiB blocks
    expected = hashlib.sha256(source.read_bytes()).hexdigest()

    assert fetch(str(source), tmp_path / "a.bin", expected) == expected
    assert fetch(source.as_uri(), tmp_path / "b.bin") == expected
    assert (tmp_path / "b.bin").read_bytes() == source.read_bytes()
    assert sha256_file(tmp_path / "b.bin") == expected


def test_fetch_refuses_checksum_mismatch_and_leaves_nothing(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"tampered")
    with pytest.raises(DataError, match="differs from the expected 0000") as caught:
        fetch(source.as_uri(), tmp_path / "out.bin", "0" * 64)
    assert caught.value.fix and not (tmp_path / "out.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.bin"]


def test_fetch_reports_missing_source_as_data_error(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        fetch(str(tmp_path / "absent.zip"), tmp_path / "out.zip")


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_extract_zip_strips_archive_folder(tmp_path):
    archive = make_zip(tmp_path / "ml.zip", {"ml/ratings.csv": b"r", "ml/movies.csv": b"m", "other/x": b"x"})
    out = tmp_path / "out"
    extract_zip(archive, out, "ml")
    assert sorted(p.name for p in out.iterdir()) == ["movies.csv", "ratings.csv"]

    single_top = make_zip(tmp_path / "top.zip", {"top/a.csv": b"a", "top/sub/b.csv": b"b"})
    extract_zip(single_top, tmp_path / "out2")
    assert (tmp_path / "out2" / "a.csv").read_bytes() == b"a" and (tmp_path / "out2" / "sub" / "b.csv").exists()

    with pytest.raises(DataError, match="no files under nothing/"):
        extract_zip(archive, tmp_path / "out3", "nothing")


def test_extract_zip_refuses_paths_escaping_the_folder(tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"../escape.txt": b"x"})
    with pytest.raises(DataError, match="unsafe member path"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_zip_refuses_corrupt_archive(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(DataError, match="corrupt archive"):
        extract_zip(tmp_path / "bad.zip", tmp_path / "out")


def test_known_sources_and_overrides():
    assert KNOWN["ml-latest-small"].downloads[0].sha256.startswith("696d65a3")
    assert KNOWN["ml-32m"].downloads[0].sha256 is None
    assert KNOWN["ml-1m"].format == "movielens-dat"
    assert [d.url.rsplit("/", 1)[1] for d in KNOWN["amazon-toys"].downloads] == [
        "reviews_Toys_and_Games_5.json.gz", "meta_Toys_and_Games.json.gz"]

    assert dataset_source("my-data") is None
    custom = dataset_source("my-data", url="file:///tmp/x.zip", sha256="a" * 64)
    assert custom.format == "auto" and custom.downloads[0].sha256 == "a" * 64 and custom.downloads[0].is_zip
    assert dataset_source("ml-32m", sha256="b" * 64).downloads[0].sha256 == "b" * 64
    with pytest.raises(DataError, match="ambiguous"):
        dataset_source("amazon-toys", sha256="b" * 64)


def test_read_sha256sums(tmp_path):
    digest = "ab" * 32
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  ratings.csv\n\n{digest} *movies.csv\n")
    assert read_sha256sums(tmp_path / "SHA256SUMS") == {"ratings.csv": digest, "movies.csv": digest}
    (tmp_path / "SHA256SUMS").write_text("nothex ratings.csv\n")
    with pytest.raises(DataError, match="row 1"):
        read_sha256sums(tmp_path / "SHA256SUMS")
