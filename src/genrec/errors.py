"""The one error type stages raise for bad input: its message names the file, row, column and fix."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message says where (file, row or line, column) and what to do."""

    def __init__(self, message: str, *, path=None, row: int | None = None, column: str | None = None,
                 fix: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        text = (": ".join([", ".join(where), message]) if where else message)
        if fix:
            text += f". {fix}"
        super().__init__(text)
        self.path, self.row, self.column, self.fix = path, row, column, fix
