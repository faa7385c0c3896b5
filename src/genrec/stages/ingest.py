"""Stage `ingest`: get a raw dataset, verify it, and write the canonical tables.

    genrec ingest --raw data/raw/<dataset> --out data/interim/<dataset> [--mirror DIR]

Source order: the raw folder if it already holds the dataset's files (`source: local`; it is a DVC
output with `persist: true`, so it survives reruns), else `<mirror>/<dataset>/` checked file by file
against its SHA256SUMS (`mirror`), else the official archive or `ingest.url` (`url`), checked
against its known sha256 (for sources without one, the first download's hash is logged and kept in
the manifest). The raw folder and the output folder are each written atomically.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

from genrec.data.datasets import KNOWN, copy_hashing, dataset_source, extract_zip, fetch, read_sha256sums
from genrec.errors import DataError
from genrec.io import atomic_path, sha256_file
from genrec.config.params import Params
from genrec.data.readers import READERS, dataset_files
from genrec.data.tables import MAX_TITLE_CHARS, truncate_titles

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS"


def run(params: Params, *, raw_dir: Path, out_dir: Path, mirror: Path | None) -> dict:
    """Ingest `params.dataset` into `out_dir` (interactions.parquet, items.parquet, manifest.json).

    Returns:
        The paths written, by name.

    Raises:
        DataError: no source has the dataset, a checksum differs, or the files hold bad input.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    fmt = _format(params)
    source, downloads = _acquire(params, fmt, raw_dir, mirror)
    found = dataset_files(raw_dir, fmt)
    if found is None:
        raise DataError(f"no {fmt} files for dataset {params.dataset!r} after getting it from {source}",
                        path=raw_dir, fix="Check the source's layout, or set ingest.format")
    fmt, interactions_path, items_path = found
    files = _verified_hashes(raw_dir, [interactions_path, items_path])
    log.info("reading %s (%s) from %s", params.dataset, fmt, raw_dir)
    interactions, items = READERS[fmt](interactions_path, items_path, drop_untitled=params.ingest.drop_untitled)
    check_not_empty(interactions, items, interactions_path, items_path, params.ingest.drop_untitled)
    items, nfc = nfc_titles(items)
    items, truncated = truncate_titles(items)
    if truncated:
        log.warning("%s: %d titles longer than %d characters were cut at a word boundary", items_path, truncated,
                    MAX_TITLE_CHARS)
    manifest = {
        "dataset": params.dataset, "format": fmt, "source": source, "files": files, "downloads": downloads,
        "rows": {"interactions": len(interactions), "items": len(items),
                 "users": int(interactions["user_id"].nunique())},
        "titles_truncated": truncated, "max_title_chars": MAX_TITLE_CHARS,
        # Only when a title changed, so that a catalogue already in NFC keeps a byte-identical manifest.
        **({"titles_nfc": nfc} if nfc["changed"] else {}),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        interactions.to_parquet(tmp / "interactions.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("ingest %s: %s", params.dataset, manifest["rows"])
    return {name: out_dir / name for name in ("interactions.parquet", "items.parquet", "manifest.json")}


def nfc_titles(items):
    """Titles in Unicode NFC, so that one title typed in composed and decomposed forms ("é" as one code point or
    as "e" + U+0301) is one catalogue title, with the tokens of one.

    Returns:
        (items, {"changed": titles rewritten, "merged": distinct titles that became equal to another}).
    """
    titles = items["title"].map(lambda title: unicodedata.normalize("NFC", title))
    counts = {"changed": int((titles != items["title"]).sum()),
              "merged": int(items["title"].nunique() - titles.nunique())}
    if counts["changed"]:
        log.warning("%d titles rewritten in Unicode NFC; %d were another title's other form", counts["changed"],
                    counts["merged"])
    return items.assign(title=titles), counts


def check_not_empty(interactions, items, interactions_path: Path, items_path: Path, drop_untitled: bool) -> None:
    """Refuse a dataset without interactions or items before it can replace a good interim output."""
    if len(items) == 0:
        raise DataError("no items", path=items_path,
                        fix="The file holds no item rows" + (" with a title (ingest.drop_untitled dropped them)"
                                                            if drop_untitled else "") + "; check the source")
    if len(interactions) == 0:
        raise DataError("no interactions", path=interactions_path,
                        fix="The file holds a header but no rows" + (", or every row was of an untitled item "
                                                                    "(ingest.drop_untitled)" if drop_untitled else "")
                        + "; check the source")


def _format(params: Params) -> str:
    if params.ingest.format != "auto":
        return params.ingest.format
    known = KNOWN.get(params.dataset)
    return known.format if known and not params.ingest.url else "auto"


def _acquire(params: Params, fmt: str, raw_dir: Path, mirror: Path | None) -> tuple[str, list[dict]]:
    """Make sure `raw_dir` holds the dataset; return the source used and what was downloaded."""
    if dataset_files(raw_dir, fmt) is not None:
        return "local", []
    if raw_dir.is_dir() and any(raw_dir.iterdir()):
        # Replacing the folder would delete files someone put there by hand.
        raise DataError(f"holds files, but not the {fmt} files of {params.dataset!r}", path=raw_dir,
                        fix="Complete them (see genrec.data.readers.dataset_files), or remove the folder to fetch it")
    if mirror is not None and (Path(mirror) / params.dataset).is_dir():
        copy_mirror(Path(mirror) / params.dataset, raw_dir)
        return "mirror", []
    source = dataset_source(params.dataset, params.ingest.url, params.ingest.sha256)
    if source is None:
        raise DataError(f"no files for dataset {params.dataset!r}", path=raw_dir,
                        fix="Put interactions.csv and items.csv (or a known format's files) there, provide "
                            f"<GENREC_DATA_MIRROR>/{params.dataset}/, or set ingest.url")
    return "url", download(source, raw_dir)


def copy_mirror(folder: Path, raw_dir: Path) -> dict[str, str]:
    """Copy every file of `folder` into `raw_dir` (atomically), checking each against `folder/SHA256SUMS`.

    Returns:
        {relative path: sha256} of the copied files.

    Raises:
        DataError: a file differs from SHA256SUMS, or a file it lists is missing.
    """
    sums = read_sha256sums(folder / SUMS) if (folder / SUMS).is_file() else None
    if sums is None:
        log.warning("%s has no %s: copying it unverified", folder, SUMS)
    hashes = {}
    with atomic_path(raw_dir) as tmp:
        tmp.mkdir()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            with open(path, "rb") as f:
                hashes[name] = copy_hashing(iter(lambda: f.read(1 << 20), b""), tmp / name, path.stat().st_size, name)
            if sums is not None and name != SUMS:
                _check_sum(path, hashes[name], sums.get(name), folder / SUMS)
        missing = sorted(set(sums or {}) - set(hashes))
        if missing:
            raise DataError(f"{', '.join(missing)} listed in {SUMS} but missing", path=folder,
                            fix="Restore the files from the official archive")
    log.info("copied %d %s from %s", len(hashes), "unverified files" if sums is None else "files verified against "
             + SUMS, folder)
    return hashes


def _check_sum(path: Path, actual: str, expected: str | None, sums_path: Path) -> None:
    if expected is None:
        log.warning("%s is not listed in %s: not verified", path, sums_path)
    elif actual != expected:
        raise DataError(f"sha256 {actual} differs from {expected} in {sums_path.name}", path=path,
                        fix="The copy is damaged or was changed: restore it from the official archive "
                            "(or regenerate SHA256SUMS if the change is intended)")


def download(source, raw_dir: Path) -> list[dict]:
    """Fetch each file of `source` into `raw_dir` (atomically), extracting zip archives.

    Returns:
        One {url, sha256, verified} record per download; `verified` is False where no checksum was known.
    """
    records = []
    with atomic_path(raw_dir) as tmp:
        tmp.mkdir()
        for item in source.downloads:
            target = tmp / Path(item.url.rstrip("/")).name
            digest = fetch(item.url, target, item.sha256)
            if item.sha256 is None:
                log.warning("%s has no known sha256; this download's is %s (pin it with ingest.sha256)",
                            item.url, digest)
            if item.is_zip:
                extract_zip(target, tmp, item.archive_dir)
                target.unlink()
            records.append({"url": item.url, "sha256": digest, "verified": item.sha256 is not None})
    return records


def _verified_hashes(raw_dir: Path, paths: list[Path]) -> dict[str, str]:
    """sha256 of each file read, checked against `raw_dir/SHA256SUMS` where that lists it."""
    sums = read_sha256sums(raw_dir / SUMS) if (raw_dir / SUMS).is_file() else {}
    hashes = {}
    for path in paths:
        name = path.relative_to(raw_dir).as_posix()
        hashes[name] = sha256_file(path)
        if name in sums:
            _check_sum(path, hashes[name], sums[name], raw_dir / SUMS)
    return hashes
