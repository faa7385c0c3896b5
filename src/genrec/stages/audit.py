"""Audit stage: the leakage audits of the split, the prompt records and the item indexes, one report.

    genrec audit --processed data/processed/<dataset> --prompts data/prompts/<dataset> \\
        --indexes data/index/<dataset> --metrics reports/<dataset>/audit.json

Four audits (`genrec.data.audit`), each a count and a share of the valid/test targets that trips when the share
exceeds its limit `audit.<name>_max`:
- consecutive_ids: per item index built (data/index/<dataset>/<method>/codes.json), test targets coded as the
  last history item + 1; only the indexes in use (`index.p5` and `index.genrec`) can trip it;
- target_in_prompt: target titles in their own prompt's history text through another item (a distinct item
  with the same title, or inside another title), in the prompt records and in the user's whole history;
- timestamp_ties: targets sharing their timestamp with a history item;
- targets_in_history: targets already in the user's history.

Writes `metrics_path` (a DVC metrics file): the policy, the tripped audits, every audit's numbers and one
`findings` line per audit, which Table 1 prints under the dataset. `audit.policy: warn` logs a warning per
tripped audit; `fail` writes the report, then stops with a DataError naming them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from genrec.config.params import Params
from genrec.data import audit
from genrec.data.sequences import Sequences, load_sequences
from genrec.errors import DataError
from genrec.indexing.codes import CODES_FILE, ItemCodes
from genrec.io import write_json

log = logging.getLogger(__name__)

NAMES = {"consecutive_ids": "consecutive ids", "target_in_prompt": "target in prompt",
         "timestamp_ties": "timestamp ties", "targets_in_history": "targets in history"}
"""The audits, in report order, and how a findings line names each."""


def run(params: Params, *, processed_dir: Path, prompts_dir: Path, indexes_dir: Path, metrics_path: Path) -> dict:
    """Run every audit, write the report, then apply `audit.policy`.

    Returns:
        {"metrics": path written, "tripped": [audit names], "findings": [one line per audit]}.

    Raises:
        DataError: bad or missing input (a split part, a prompt record, an index in use that is not built), or
            with `audit.policy: fail`, a tripped audit (after the report is written).
    """
    start = time.perf_counter()
    processed_dir, prompts_dir, indexes_dir = Path(processed_dir), Path(prompts_dir), Path(indexes_dir)
    cfg = params.audit
    seqs = load_sequences(processed_dir)
    users = len(seqs.user_ids)
    audits = {
        "consecutive_ids": consecutive_ids_audit(seqs, indexes_dir, in_use(params), cfg.consecutive_ids_max),
        "target_in_prompt": target_in_prompt_audit(seqs, prompts_dir, cfg.target_in_prompt_max),
        "timestamp_ties": rates(audit.timestamp_ties(seqs, audit.read_timestamps(processed_dir, seqs)), users,
                                cfg.timestamp_ties_max),
        "targets_in_history": rates(audit.targets_in_history(seqs), users, cfg.targets_in_history_max),
    }
    tripped = [name for name, result in audits.items() if result["tripped"]]
    lines = findings(audits, cfg.policy)
    write_json(metrics_path, {"policy": cfg.policy, "tripped": tripped, "audits": audits, "findings": lines})
    for name, line in zip(audits, lines):
        (log.warning if name in tripped else log.info)("%s", line)
    log.info("audited %d users in %.1f s -> %s", users, time.perf_counter() - start, metrics_path)
    if tripped and cfg.policy == "fail":
        raise DataError(f"leakage audits tripped: {', '.join(tripped)} (audit.policy=fail)", path=metrics_path,
                        fix="see its findings; fix the data or the prompt builder, or raise "
                            f"{', '.join(f'audit.{name}_max' for name in tripped)} or set audit.policy=warn")
    return {"metrics": Path(metrics_path), "tripped": tripped, "findings": lines}


def in_use(params: Params) -> list[str]:
    """The item indexes a model of the pipeline trains on: `index.p5`, then `index.genrec`, each once."""
    return list(dict.fromkeys([*params.index.p5, *params.index.genrec]))


def share(count: int, total: int) -> float:
    """count / total rounded for the report (0 for no total); limits are compared with the exact ratio."""
    return round(count / total, 6) if total else 0.0


def exceeds(count: int, total: int, limit: float) -> bool:
    return bool(total) and count / total > limit


def rates(counts: dict[str, int], users: int, limit: float) -> dict:
    """Counts and shares of the valid targets, the test targets and both together; tripped: both's share > limit."""
    count = counts["valid"] + counts["test"]
    return {"valid_count": counts["valid"], "valid_share": share(counts["valid"], users),
            "test_count": counts["test"], "test_share": share(counts["test"], users),
            "count": count, "targets": 2 * users, "share": share(count, 2 * users),
            "limit": limit, "tripped": exceeds(count, 2 * users, limit)}


def consecutive_ids_audit(seqs: Sequences, indexes_dir: Path, used: list[str], limit: float) -> dict:
    """`audit.consecutive_ids` of every index folder under `indexes_dir`; tripped: an index in use whose test
    share exceeds `limit`.

    Raises:
        DataError: an index in use has no folder.
    """
    for method in used:
        if not (indexes_dir / method / CODES_FILE).is_file():
            raise DataError(f"item index {method!r} is in use (index.p5 / index.genrec) but not built",
                            path=indexes_dir / method / CODES_FILE,
                            fix=f"add {method} to index.methods and run `genrec index` (dvc repro index@<dataset>)")
    built = sorted(path.parent.name for path in indexes_dir.glob(f"*/{CODES_FILE}"))
    indexes = {}
    for method in [*used, *(m for m in built if m not in used)]:
        folder = indexes_dir / method
        counts = audit.consecutive_ids(seqs, ItemCodes.load(folder), folder / CODES_FILE)
        users = counts["users"]
        indexes[method] = {"in_use": method in used, "leaky": counts["leaky"], "depth": counts["depth"],
                           "items": counts["items"], "chance": round(counts["chance"], 8),
                           "valid_count": counts["valid"], "valid_share": share(counts["valid"], users),
                           "test_count": counts["test"], "test_share": share(counts["test"], users), "users": users}
        indexes[method]["tripped"] = method in used and exceeds(counts["test"], users, limit)
    worst = max((r["test_share"] for r in indexes.values() if r["in_use"]), default=0.0)
    return {"limit": limit, "share": worst, "tripped": any(r["tripped"] for r in indexes.values()),
            "indexes": indexes}


def target_in_prompt_audit(seqs: Sequences, prompts_dir: Path, limit: float) -> dict:
    """`audit.title_leak` over the valid/test prompt records and over each user's whole history.

    A target counts when either text shows its title through another item (`shared_title` or `substring`);
    a repeat of the target itself is the targets-in-history audit's. `shared_title` and `substring` break the
    count down (the records' kind first); `example` shows one.
    """
    titles = dict(zip(seqs.item_ids, seqs.titles))
    views: dict[str, dict] = {"records": {}, "history": {}}
    leaked: dict[str, dict[str, audit.Leak]] = {}
    for name in audit.TARGETS:
        records, by_record = audit.record_leaks(prompts_dir / f"{name}.jsonl", titles)
        by_history = audit.history_leaks(seqs, name)
        views["records"][name] = audit.leak_counts(records, by_record)
        views["history"][name] = audit.leak_counts(len(seqs.user_ids), by_history)
        leaked[name] = {user: found for source in (by_history, by_record) for user, found in source.items()
                        if found.kind != "repeat"}
    found = [leak for name in audit.TARGETS for leak in leaked[name].values()]
    kinds = [leak.kind for leak in found]
    example = next((f"{leak.title!r} inside {leak.shown!r}" if leak.kind == "substring" and leak.shown else
                    f"{leak.title!r}, the title of another item too" if leak.kind == "shared_title" else
                    f"{leak.title!r} across two titles" for leak in found), "")
    return {**rates({name: len(leaked[name]) for name in audit.TARGETS}, len(seqs.user_ids), limit),
            "shared_title": kinds.count("shared_title"), "substring": kinds.count("substring"), "example": example,
            **views}


def percent(count: int, total: int, noun: str) -> str:
    """E.g. "91 of 610 test targets (14.9%)"."""
    return f"{count:,} of {total:,} {noun} ({100 * count / total if total else 0.0:.1f}%)"


def findings(audits: dict, policy: str) -> list[str]:
    """One self-explanatory line per audit, tripped or not, ending with its limit and `ok` or the policy."""
    def status(result: dict) -> str:
        return f"(limit {result['limit']}): {policy if result['tripped'] else 'ok'}"

    consecutive, prompt = audits["consecutive_ids"], audits["target_in_prompt"]
    ties, repeats = audits["timestamp_ties"], audits["targets_in_history"]
    indexes = consecutive["indexes"]
    users = ties["targets"] // 2

    def index_shares(in_use: bool) -> str:
        return ", ".join(f"{method}{' (leaky)' if r['leaky'] else ''} {r['test_count']:,} "
                         f"({100 * r['test_share']:.1f}%)" for method, r in indexes.items()
                         if r["in_use"] == in_use) or "none"

    items = next((r["items"] for r in indexes.values()), 0)
    example = f", e.g. {prompt['example']}" if prompt["example"] else ""
    return [
        f"{NAMES['consecutive_ids']}: test targets coded as the user's last history item + 1, of {users:,} "
        f"(chance 1/{items:,} each): in use {index_shares(True)}; not in use {index_shares(False)} "
        f"{status(consecutive)}",
        f"{NAMES['target_in_prompt']}: {percent(prompt['count'], prompt['targets'], 'valid/test targets')} have their "
        f"title in their prompt's history text through another item ({prompt['shared_title']:,} with the same "
        f"title, {prompt['substring']:,} inside a longer title{example}) {status(prompt)}",
        f"{NAMES['timestamp_ties']}: {percent(ties['test_count'], users, 'test targets')} share their timestamp with "
        f"a history item and {percent(ties['valid_count'], users, 'valid targets')} with a training item (a tie's "
        f"order came from the source file, not the clock) {status(ties)}",
        f"{NAMES['targets_in_history']}: {percent(repeats['test_count'], users, 'test targets')} and "
        f"{percent(repeats['valid_count'], users, 'valid targets')} are already in the user's history "
        f"{status(repeats)}",
    ]
