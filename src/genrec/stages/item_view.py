"""Item-view stage: the split with every item named by its codes, so GenRec can generate codes instead of titles.

    genrec item_view --processed data/processed/<dataset> --index data/index/<dataset>/<method> \\
        --out data/views/<dataset>/<method>/split

Writes `out_dir` atomically: train/valid/test.parquet copied byte for byte (the split fingerprint stays the
same, so the report compares GenRec on codes with every other model on the same users), `items.parquet` with
`title` the item's code text ("<a_12><b_7><c_3>"; with `index.genrec_text: codes+title`, the codes then the
title) and `display_title` the catalogue title, and the index's `codes.json`, from which `genrec train` adds
the code tokens to the vocabulary (`genrec.models.genrec.code_tokens`). The prompts, train and evaluate stages
then run on the view as on any split.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from genrec.config.layout import SPLITS
from genrec.config.params import Params
from genrec.data.sequences import read_titles
from genrec.indexing.codes import CODES_FILE, ItemCodes, check_codes
from genrec.io import atomic_path

log = logging.getLogger(__name__)


def item_text(codes: ItemCodes, item: str, title: str, text: str) -> str:
    """How the view names an item: its code tokens, or (codes+title) the codes then the title."""
    return codes.text(item) if text == "codes" else f"{codes.text(item)} {title}"


def run(params: Params, *, processed_dir: Path, index_dir: Path, out_dir: Path) -> dict:
    """Write the item view of the split in `processed_dir` under the index in `index_dir`.

    Returns:
        {"out_dir", "method", "items"}.

    Raises:
        DataError: a split without items.parquet, or an index that does not name every catalogue item.
    """
    processed_dir, index_dir = Path(processed_dir), Path(index_dir)
    codes = ItemCodes.load(index_dir)
    titles = read_titles(processed_dir)
    check_codes(codes, titles, index_dir / CODES_FILE)
    items = sorted(titles)
    text = params.index.genrec_text
    table = pd.DataFrame({"item_id": items, "title": [item_text(codes, i, titles[i], text) for i in items],
                          "display_title": [titles[i] for i in items]})
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in SPLITS:
            shutil.copyfile(processed_dir / f"{name}.parquet", tmp / f"{name}.parquet")
        table.to_parquet(tmp / "items.parquet", index=False)
        codes.save(tmp)
    log.info("%s view of %d items (%s) -> %s", codes.method, len(items), text, out_dir)
    return {"out_dir": Path(out_dir), "method": codes.method, "items": len(items)}
