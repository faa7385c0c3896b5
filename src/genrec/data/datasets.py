"""Known datasets (official URL, checksum, format, archive layout) and how to fetch and verify them.

A dataset not listed here is "generic": its files must already be in `data/raw/<name>/` or in the
mirror, or `ingest.url` must point at an archive. Checksums of the MovieLens archives come from
TensorFlow Datasets' `url_checksums/movielens.txt`; the other sources publish none, so the first
download's hash is logged and written into the ingest manifest (pin it with `ingest.sha256`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
from tqdm import tqdm

from genrec.errors import DataError
from genrec.io import atomic_path

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
SNAP_2014 = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
# The 2018 files (Ni, Li & McAuley, EMNLP 2019) moved from deepyeti.ucsd.edu to this host.
UCSD_2018 = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Download:
    url: str
    """Where the file is (http(s), file:// or a local path)."""
    sha256: str | None = None
    """Expected sha256 of the downloaded file; None means unknown (the first download's hash is logged)."""
    archive_dir: str | None = None
    """For a .zip: the folder inside it holding the files (None: its single top folder, if any)."""

    @property
    def is_zip(self) -> bool:
        return self.url.lower().endswith(".zip")


@dataclass(frozen=True)
class DatasetSource:
    name: str
    format: str
    """Reader for the files (see `genrec.data.readers.READERS`)."""
    downloads: tuple[Download, ...]


def _movielens(name: str, fmt: str, sha256: str | None) -> DatasetSource:
    return DatasetSource(name, fmt, (Download(f"{GROUPLENS}/{name}.zip", sha256, archive_dir=name),))


def _amazon_2014(name: str, category: str) -> DatasetSource:
    return DatasetSource(name, "amazon-2014", (
        Download(f"{SNAP_2014}/reviews_{category}_5.json.gz"),
        Download(f"{SNAP_2014}/meta_{category}.json.gz"),
    ))


def _amazon_2018(name: str, category: str) -> DatasetSource:
    return DatasetSource(name, "amazon-2018", (
        Download(f"{UCSD_2018}/categoryFilesSmall/{category}_5.json.gz"),
        Download(f"{UCSD_2018}/metaFiles2/meta_{category}.json.gz"),
    ))


KNOWN = {s.name: s for s in (
    _movielens("ml-latest-small", "movielens", "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),
    _movielens("ml-1m", "movielens-dat", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    _movielens("ml-20m", "movielens", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    _movielens("ml-25m", "movielens", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
    _movielens("ml-32m", "movielens", None),
    # The Amazon categories of the P5 and GenRec papers (2014 5-core reviews + metadata).
    _amazon_2014("amazon-toys", "Toys_and_Games"),
    _amazon_2014("amazon-beauty", "Beauty"),
    _amazon_2014("amazon-sports", "Sports_and_Outdoors"),
    _amazon_2018("amazon2018-toys", "Toys_and_Games"),
    _amazon_2018("amazon2018-beauty", "All_Beauty"),
    _amazon_2018("amazon2018-sports", "Sports_and_Outdoors"),
)}


def dataset_source(name: str, url: str | None = None, sha256: str | None = None) -> DatasetSource | None:
    """Where to download dataset `name` from, with the `ingest.url` / `ingest.sha256` params applied.

    Args:
        name: Dataset name (`params.dataset`).
        url: An archive URL that replaces the known source (or gives one to a generic dataset).
        sha256: Expected sha256 of that archive, or a pin for a known single-archive dataset.

    Returns:
        The source, or None for a generic dataset without `url` (its files must be present).

    Raises:
        DataError: `sha256` given for a dataset with several files, where it would be ambiguous.
    """
    known = KNOWN.get(name)
    if url:
        return DatasetSource(name, known.format if known else "auto", (Download(url, sha256),))
    if known is None or sha256 is None:
        return known
    if len(known.downloads) != 1:
        raise DataError(f"ingest.sha256 is ambiguous: {name} has {len(known.downloads)} files",
                        fix="Unset ingest.sha256 (each file's hash is recorded in the manifest)")
    return dataclasses.replace(known, downloads=(dataclasses.replace(known.downloads[0], sha256=sha256),))


def copy_hashing(chunks: Iterable[bytes], dest: Path, total: int | None = None, desc: str = "") -> str:
    """Write `chunks` to `dest` atomically with a progress bar; return the sha256 of what was written."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(tmp, "wb") as out, \
            tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None) as bar:
        for block in chunks:
            digest.update(block)
            out.write(block)
            bar.update(len(block))
    return digest.hexdigest()


def fetch(url: str, dest: Path, sha256: str | None = None) -> str:
    """Download `url` (http(s), file:// or a local path) to `dest`, streamed, and check its sha256.

    Returns:
        The sha256 of the file; with `sha256=None` the caller records it (nothing to compare with).

    Raises:
        DataError: the download failed, or its sha256 differs from `sha256` (then `dest` is removed).
    """
    parsed = urlparse(url)
    try:
        if parsed.scheme in ("http", "https"):
            with requests.get(url, stream=True, timeout=60) as response:
                response.raise_for_status()
                total = int(response.headers.get("content-length") or 0) or None
                digest = copy_hashing(response.iter_content(CHUNK), dest, total, dest.name)
        else:
            source = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(url)
            with open(source, "rb") as f:
                digest = copy_hashing(iter(lambda: f.read(CHUNK), b""), dest, source.stat().st_size, dest.name)
    except (requests.RequestException, OSError) as err:
        raise DataError(f"download failed: {err}", path=url,
                        fix="Check the network, or put the files in the raw folder or in GENREC_DATA_MIRROR") from err
    if sha256 is not None and digest != sha256.lower():
        dest.unlink()
        raise DataError(f"sha256 {digest} differs from the expected {sha256.lower()}", path=url,
                        fix="The download is corrupt or the file changed upstream: retry; if the new file "
                            "is right, set ingest.sha256 to its hash")
    return digest


def extract_zip(archive: Path, dest: Path, archive_dir: str | None = None) -> list[Path]:
    """Extract the files under `archive_dir/` in `archive` into `dest`, without that folder prefix.

    With `archive_dir=None` a single top folder shared by every member is stripped, if there is one.

    Raises:
        DataError: a corrupt archive, a member path escaping `dest`, or nothing under `archive_dir`.
    """
    written = []
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            paths = [PurePosixPath(m.filename) for m in members]
            for path in paths:
                if path.is_absolute() or ".." in path.parts:
                    raise DataError(f"unsafe member path {str(path)!r}", path=archive,
                                    fix="Use an archive whose members stay inside its folder")
            prefix = PurePosixPath(archive_dir).parts if archive_dir else _common_top(paths)
            for member, path in zip(members, paths):
                if path.parts[:len(prefix)] != prefix:
                    continue
                target = dest.joinpath(*path.parts[len(prefix):])
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                written.append(target)
    except zipfile.BadZipFile as err:
        raise DataError(f"corrupt archive: {err}", path=archive, fix="Delete it and download again") from err
    if not written:
        raise DataError(f"no files under {archive_dir or ''}/ in the archive", path=archive,
                        fix="Check the archive's layout")
    return written


def _common_top(paths: list[PurePosixPath]) -> tuple[str, ...]:
    tops = {p.parts[0] for p in paths if len(p.parts) > 1}
    return (tops.pop(),) if len(tops) == 1 and all(len(p.parts) > 1 for p in paths) else ()


def read_sha256sums(path: Path) -> dict[str, str]:
    """`sha256sum` output (`<hex>  <name>` or `<hex> *<name>` per line) as {name: hex}."""
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError("expected '<sha256>  <file name>'", path=path, row=number,
                            fix="Regenerate it with `sha256sum * > SHA256SUMS`")
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums
