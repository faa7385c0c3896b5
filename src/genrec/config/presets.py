"""Presets: named sets of params overrides, such as the paper's setting for each dataset.

A preset is a YAML mapping of dotted params keys to values in `configs/presets/<name>.yaml`. `genrec preset
NAME` prints it as `-S key=value` words for `dvc exp run $(genrec preset NAME)` (or `--set` words for a
`genrec` command). Values are written in YAML flow style without spaces, so the shell's word splitting of
`$(...)` keeps each override whole.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from genrec.errors import DataError
from genrec.config.layout import PRESETS


def available(folder: Path = PRESETS) -> list[str]:
    """Names of the presets in `folder`."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def overrides(name: str, folder: Path = PRESETS) -> list[str]:
    """The preset's overrides as `key=value` strings, in file order.

    Raises:
        DataError: an unknown preset (the message lists the known ones) or a file that is not a mapping.
    """
    path = Path(folder) / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"no preset {name!r}", path=folder,
                        fix=f"Use one of {', '.join(available(folder)) or 'none (no presets here)'}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise DataError("expected a mapping of params keys to values", path=path)
    out = []
    for key, value in data.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("...").strip().replace(", ", ",")
        if " " in text:
            raise DataError(f"{key}: the value {text!r} holds a space", path=path,
                            fix="Presets are passed through the shell's word splitting: write it without spaces")
        out.append(f"{key}={text}")
    return out
