"""Table stage: one Table 1 across every dataset of the workspace.

    genrec table --reports reports --out results/table1.md

Reads `reports/<dataset>/metrics/*.json` and `split_stats.json` for every dataset the pipeline built and writes
one markdown file with a block per dataset (`genrec.report.table_one`). It depends on the whole `reports/`
folder (DVC orders it after every dataset's stages), so its output lives outside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from genrec import report
from genrec.io import atomic_path
from genrec.params import Params

log = logging.getLogger(__name__)


def run(params: Params, *, reports_dir: Path, out_path: Path) -> dict:
    """Write the cross-dataset Table 1 to `out_path`.

    Raises:
        DataError: no dataset folder with metrics files under `reports_dir`.
    """
    text = report.table_one(reports_dir, links_from=Path(out_path).parent)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("Table 1 over %d dataset(s) -> %s", text.count("\n## "), out_path)
    return {"out_path": Path(out_path)}
