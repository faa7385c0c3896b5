"""Top-k recommendations for free-form histories of titles, shared by `genrec recommend` and the pyfunc.

A history arrives as titles typed by a person or sent by a client. Each is matched to the catalogue
(after whitespace normalisation, as evaluation matches generated text); a title that is not there is
reported instead of being dropped silently, the latest `MAX_SUGGESTED` of them with their closest
catalogue titles (difflib: about 0.1 s a title over ml-latest-small's 9,737 titles, so a long history
of unknown titles cannot keep a request busy), and the recommendation uses the titles that matched. The prompt, the title trie and the beam search are the
evaluation's own (`genrec.models.genrec.evaluation`, `genrec.decoding.trie`, `genrec.decoding.beam_search`), with the protocol of
`params.eval`, so a served list is what the evaluator would have ranked for that history. Serving is
always constrained to catalogue titles: a recommendation must be a real item.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from genrec.errors import DataError
from genrec.config.params import EvalParams, Params
from genrec.config.layout import SPLITS
from genrec.data.sequences import read_titles, read_user_items
from genrec.decoding.trie import Catalogue, normalise_text

log = logging.getLogger(__name__)

MAX_K = 100
"""Largest list a request may ask for: the beam width grows with k and so does the cost."""
MAX_SUGGESTED = 5
"""Unknown history titles (the latest ones) that get suggestions; older ones are reported without."""
MAX_SUGGESTIONS = 5
"""Most suggestions per unknown title."""


@dataclass(frozen=True)
class UnknownTitle:
    """A history title that is not in the catalogue, with the closest catalogue titles (None: not searched)."""

    title: str
    suggestions: tuple[str, ...] | None

    def to_dict(self) -> dict:
        return {"title": self.title, "suggestions": None if self.suggestions is None else list(self.suggestions)}


@dataclass(frozen=True)
class ResolvedHistory:
    """A history matched to the catalogue: known title indices (oldest first) and the unknown titles."""

    indices: tuple[int, ...]
    unknown: tuple[UnknownTitle, ...]


@dataclass(frozen=True)
class Recommendation:
    """One history's ranked list: titles (best first), beam scores, item ids, and what was not matched."""

    titles: list[str]
    scores: list[float]
    item_ids: list[list[str]]
    unknown: list[UnknownTitle] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"titles": self.titles, "scores": self.scores, "item_ids": self.item_ids,
                "unknown": [u.to_dict() for u in self.unknown]}


def closest_titles(title: str, catalogue: Catalogue, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The catalogue titles most similar to `title` (difflib ratio >= cutoff), best first.

    Compared case-insensitively, so "toy story (1995)" still finds "Toy Story (1995)". A short query
    ("heat") rarely reaches the ratio, so titles containing it fill the remaining places, shortest first.
    """
    lowered = _lowered(catalogue.titles)
    query = normalise_text(title).lower()
    matches = difflib.get_close_matches(query, list(lowered), n=n, cutoff=cutoff)
    if len(matches) < n and query:
        containing = sorted((t for t in lowered if query in t and t not in matches), key=lambda t: (len(t), t))
        matches += containing[:n - len(matches)]
    return [lowered[m] for m in matches]


@functools.lru_cache(maxsize=4)
def _lowered(titles: tuple[str, ...]) -> dict[str, str]:
    """Lower-cased title -> title (the first of a case-insensitive tie), built once per catalogue."""
    lowered = {}
    for t in titles:
        lowered.setdefault(t.lower(), t)
    return lowered


def resolve_history(titles: Sequence[str], catalogue: Catalogue, n_suggestions: int = 3) -> ResolvedHistory:
    """Match each history title to the catalogue; collect the unknown ones, the latest `MAX_SUGGESTED` of them
    with at most `MAX_SUGGESTIONS` suggestions each.

    Raises:
        ValueError: for an empty history, or one in which no title is in the catalogue (the message
            lists each unknown title with its suggestions).
    """
    if not titles or not any(str(t).strip() for t in titles):
        raise ValueError("empty history: give at least one title the user watched, oldest first")
    known, missing = [], []
    for title in titles:
        index = catalogue.find_title(str(title))
        if index is None:
            missing.append(str(title))
        else:
            known.append(index)
    n = min(n_suggestions, MAX_SUGGESTIONS)
    searched = len(missing) - MAX_SUGGESTED
    unknown = [UnknownTitle(t, tuple(closest_titles(t, catalogue, n)) if i >= searched else None)
               for i, t in enumerate(missing)]
    if not known:
        raise ValueError("no title of the history is in the catalogue: " + describe_unknown(unknown))
    return ResolvedHistory(tuple(known), tuple(unknown))


def describe_unknown(unknown: Sequence[UnknownTitle]) -> str:
    """One line per unknown title: `"Heat 1995" (closest: "Heat (1995)", ...)`."""
    parts = []
    for u in unknown:
        closest = (f"not searched, only the latest {MAX_SUGGESTED} unknown titles are" if u.suggestions is None
                   else ", ".join(f'"{s}"' for s in u.suggestions) or "no close title")
        parts.append(f'"{u.title}" (closest: {closest})')
    return "; ".join(parts)


class Recommender:
    """Backbone + merged adapter + prompt template + catalogue trie, ready to rank titles for histories."""

    def __init__(self, model, tokenizer, template, catalogue: Catalogue, eval_params: EvalParams):
        from genrec.models.genrec.evaluation import end_token_id, title_token_ids
        from genrec.decoding.trie import build_title_trie

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.catalogue, self.eval_params = catalogue, eval_params
        self.title_tokens = title_token_ids(catalogue, template, tokenizer)
        self.end_token_id = end_token_id(template, tokenizer)
        self.trie = build_title_trie(self.title_tokens, self.end_token_id)

    @classmethod
    def load(cls, base_dir: Path, adapter_dir: Path, items_path: Path, eval_params: EvalParams) -> Recommender:
        """Load the backbone, merge the adapter in `adapter_dir` (as `genrec train` wrote it), build the trie.

        Raises:
            DataError: a missing file, or an adapter trained on another backbone.
        """
        from genrec.models.genrec.evaluation import load_model, read_catalogue

        catalogue = read_catalogue(Path(items_path))
        model, tokenizer, template = load_model(Path(base_dir), Path(adapter_dir), Path(adapter_dir),
                                                eval_params.dtype, eval_params.device)
        return cls(model, tokenizer, template, catalogue, eval_params)

    @property
    def default_k(self) -> int:
        return self.eval_params.num_beams

    def recommend(self, histories: Sequence[Sequence[str]], ks: Sequence[int] | None = None) -> list[Recommendation]:
        """Top-k titles for each history (titles oldest first).

        The beam width is max(k, eval.num_beams): with k <= num_beams the list is the evaluator's,
        whatever else is in the batch. Titles of the history are excluded when `eval.exclude_history`.

        Raises:
            ValueError: an empty history, one without any catalogue title, one that holds every catalogue title
                while `eval.exclude_history` is true (nothing left to rank), or k outside 1..MAX_K.
        """
        ks = [self.default_k] * len(histories) if ks is None else [int(k) for k in ks]
        bad = [k for k in ks if not 1 <= k <= MAX_K]
        if bad:
            raise ValueError(f"k={bad[0]}: expected 1 <= k <= {MAX_K}")
        resolved = [resolve_history(h, self.catalogue) for h in histories]
        if any(self.available(r) == 0 for r in resolved):
            raise ValueError(f"the history holds every one of the catalogue's {len(self.catalogue.titles)} titles and "
                             "eval.exclude_history is true: nothing is left to recommend")
        out: list[Recommendation | None] = [None] * len(histories)
        widths = [max(k, self.eval_params.num_beams) for k in ks]
        for width in sorted(set(widths)):
            rows = [i for i, w in enumerate(widths) if w == width]
            for i, entries in zip(rows, self._ranked([resolved[i] for i in rows], width)):
                top = entries[:ks[i]]
                out[i] = Recommendation(titles=[e["title"] for e in top], scores=[float(e["score"]) for e in top],
                                        item_ids=[list(e["item_ids"]) for e in top],
                                        unknown=list(resolved[i].unknown))
        return out

    def available(self, resolved: ResolvedHistory) -> int:
        """How many titles a list for this history can hold: the catalogue, less the history when excluded."""
        return len(self.catalogue.titles) - (len(set(resolved.indices)) if self.eval_params.exclude_history else 0)

    def _ranked(self, resolved: list[ResolvedHistory], num_beams: int) -> list[list[dict]]:
        """Evaluation's prompt, settings and beam search for already-matched histories."""
        from genrec.decoding.beam_search import ranked_beams
        from genrec.decoding.memory import resolve_batch_size
        from genrec.models.genrec.evaluation import beam_settings, encode_prompts, ranked_entries

        e = self.eval_params
        records = [{"user_id": f"request {i}", "instruction": self.template.instructions[0],
                    "history_titles": [self.catalogue.titles[t] for t in r.indices]} for i, r in enumerate(resolved)]
        prompts, _ = encode_prompts(records, self.template, self.tokenizer, e.max_prompt_tokens)
        settings = beam_settings(e, self.tokenizer, self.end_token_id, self.title_tokens, num_beams=num_beams)
        excluded = [sorted(set(r.indices)) if e.exclude_history else [] for r in resolved]
        batch_size = resolve_batch_size(e.batch_size, self.model, max(map(len, prompts))
                                        + num_beams * settings.max_new_tokens, num_beams)
        beams = ranked_beams(self.model, prompts, settings, trie=self.trie, excluded=excluded, batch_size=batch_size)
        return [ranked_entries(hyps, self.catalogue, self.tokenizer, constrained=True) for hyps in beams]


def user_history(processed_dir: Path, user_id: str) -> list[str]:
    """A user's whole known sequence (train, valid, test; oldest first) as catalogue titles.

    Raises:
        DataError: missing split files, or a user id that is not in the split.
    """
    processed_dir = Path(processed_dir)
    history = read_user_items(processed_dir, SPLITS, users=[user_id]).get(str(user_id))
    if history is None:
        raise DataError(f"user {user_id!r} is not in the split", path=processed_dir,
                        fix="pass a user_id from train.parquet, or give the history with --history")
    title_of = read_titles(processed_dir)
    return [title_of[i] for i in history]


SERVING_KEYS = ("eval.", "tracking.")
"""Params sections `genrec recommend` reads besides `dataset`: `eval` (replacing the version's own), the store."""


def serving_overrides(params: Params, overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """Split `--set KEY=VALUE` words into the `eval` settings that replace the version's stored ones, and the
    keys serving ignores (a version brings its own backbone, adapter and prompt template).

    Returns:
        ({eval field: validated value from `params`}, [ignored keys]).
    """
    keys = [word.partition("=")[0].strip() for word in overrides]
    honoured = {key.removeprefix("eval."): getattr(params.eval, key.removeprefix("eval."))
                for key in keys if key.startswith("eval.") and hasattr(params.eval, key.removeprefix("eval."))}
    return honoured, [key for key in keys if key != "dataset" and not key.startswith(SERVING_KEYS)]


def predict(params: Params, model_uri: str, history: list[str], k: int | None = None,
            eval_overrides: dict | None = None) -> dict:
    """Load the registered version `model_uri` as genrec built it (`registry.load_version`: no code of the
    version runs) and rank titles for one history (what `genrec recommend` prints).

    Args:
        eval_overrides: `eval` settings that replace the version's stored ones (`serving_overrides`).

    Returns:
        {"titles", "scores", "item_ids", "unknown"}: the pyfunc model's output row for this history, and
        "warnings": one line each (an archived version, unchecked files, a shorter list than asked for).

    Raises:
        DataError: a model that cannot be loaded or is refused, or a history it refuses (one line each).
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from genrec.tracking import registry

    try:
        model, version, warnings = registry.load_version(params, model_uri, eval_overrides)
    except (MlflowException, OSError) as err:
        message = getattr(err, "message", None) or str(err)
        raise DataError(f"cannot load model {model_uri}: {message.splitlines()[0]}",
                        fix="Run `genrec promote` (dvc repro promote) first, or pass --model with an existing URI") \
            from None
    try:
        frame = model.predict(None, pd.DataFrame({"history": [history]}), params=None if k is None else {"k": k})
    except MlflowException as err:
        raise DataError(err.message.split("Error: ")[-1].strip()) from None
    row = frame.iloc[0].to_dict()
    recommender = model.recommender
    asked = recommender.default_k if k is None else k
    if len(row["titles"]) < asked:
        known = {recommender.catalogue.find_title(str(t)) for t in history} - {None}
        excluded = len(known) if recommender.eval_params.exclude_history else 0
        left_out = f", {excluded} of them in the history and left out (eval.exclude_history)" if excluded else ""
        warnings.append(f"{len(row['titles'])} title(s) where {asked} were asked for: the catalogue has "
                        f"{len(recommender.catalogue.titles)} titles{left_out}")
    return {**row, "warnings": warnings}
