"""The tracking store's errors as one line each: a store that is down, corrupt or read-only never reads as empty.

MLflow raises its own `MlflowException` for a server's errors and lets SQLAlchemy's through for a SQLite file that
is not a database; `store_errors` turns both (and OS errors) into one `DataError` naming the store and the action.
`is_not_found` is the one reading of an error as "nothing there".
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator
from urllib.parse import urlparse

from genrec.errors import DataError
from genrec.config.params import Params
from genrec.tracking import runs as tracking

STORE_FIX = "check that the tracking store is reachable and writable (tracking.uri, or MLFLOW_TRACKING_URI)"


def shown_store(uri: str) -> str:
    """The tracking URI without a password, for messages."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()


def store_error(uri: str, action: str, err: Exception) -> DataError:
    """One line for a tracking store that cannot be read or written: the store, the action, its first line."""
    message = (getattr(err, "message", None) or str(err) or type(err).__name__).strip().splitlines()[0]
    return DataError(f"cannot {action}: {message}", path=f"tracking store {shown_store(uri)}", fix=STORE_FIX)


@contextlib.contextmanager
def store_errors(uri: str, action: str) -> Iterator[None]:
    """Turn the store's errors inside the block into one `store_error` line.

    MLflow's SQLite store logs the whole SQLAlchemy traceback before it raises; that log is muted here,
    since the error itself is reported.
    """
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    db_log.setLevel(logging.CRITICAL)
    try:
        yield
    except (MlflowException, SQLAlchemyError, OSError) as err:
        raise store_error(uri, action, err) from None
    finally:
        db_log.setLevel(level)


def open_client(params: Params):
    """`runs.mlflow_client`, with a store that cannot be opened (a corrupt SQLite file) as one `store_error` line."""
    uri = tracking.tracking_uri(params)
    with store_errors(uri, "open the registry"):
        return tracking.mlflow_client(params)


def is_not_found(err: Exception) -> bool:
    """An MLflow error that says a registered model, version or alias does not exist (nothing else)."""
    code = getattr(err, "error_code", None)
    message = getattr(err, "message", "") or ""
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in message)
