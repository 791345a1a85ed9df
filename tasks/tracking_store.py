"""Where MLflow is, and the one-line errors about it: without importing MLflow.

The tracking URI (MLFLOW_TRACKING_URI, else the embedded sqlite store), its credentials kept out of
what is shown, the health check of a tracking server, and TrackingError with its wording. Light on
purpose: the unchanged-rerun fast path (flows.unchanged) needs these before, or without, MLflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from models.errors import LoraflowError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# MLflow's basic-auth app answers 401 (no or wrong credentials) and 403 (not permitted).
UNAUTHENTICATED, PERMISSION_DENIED = "UNAUTHENTICATED", "PERMISSION_DENIED"
# MLflow answers with these when the request itself is wrong: asking again cannot help.
PERMANENT_ERRORS = (
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    UNAUTHENTICATED,
    PERMISSION_DENIED,
)
# The basic-auth app's permissions, weakest first (DENY and NO_PERMISSIONS allow nothing).
PERMISSIONS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")


class TrackingError(LoraflowError):
    """MLflow could not be reached or refused a request."""

    retryable = True


# user:password@ (or a token as user) in any URI, and secret-looking query parameters.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?i)\b(token|password|passwd|secret|key|signature)=[^&\s]+")


def redact(text: str) -> str:
    """`text` with credentials in URIs replaced by *** (messages, links, logs)."""
    return _SECRET_QUERY.sub(r"\1=***", _USERINFO.sub(r"\g<scheme>***@", text))


def safe_tracking_uri() -> str:
    """The tracking URI as it may be shown or recorded: without credentials."""
    return redact(tracking_uri())


def tracking_user() -> str:
    """Who loraflow is to the tracking server: MLFLOW_TRACKING_USERNAME, else the URI's user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or urlsplit(tracking_uri()).username or ""


def access_denied(action: str, needs: str, held: str = "") -> TrackingError:
    """The one line for a refused permission: server (password masked), user, action, need."""
    has = f"has {held}, " if held else ""
    error = TrackingError(
        f"MLflow at {safe_tracking_uri()}: user '{tracking_user()}' may not {action} "
        f"({has}needs {needs})"
    )
    error.retryable = False
    return error


def credentials_refused() -> TrackingError:
    """The one line for a 401: which server (password masked), which user, what to set."""
    user = tracking_user()
    who = f"credentials of user '{user}' refused" if user else "no credentials sent"
    error = TrackingError(
        f"MLflow at {safe_tracking_uri()}: {who} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD"
    )
    error.retryable = False
    return error


def tracking_error(error: Exception, denied: str = "", needs: str = "EDIT") -> TrackingError:
    """One line naming the tracking server (never its credentials) and what went wrong; a
    refusal by the server's auth app names the user and, with `denied` (what the request was
    for, e.g. "change aliases of 'm'"), the permission it needs."""
    code = getattr(error, "error_code", "")
    if code == PERMISSION_DENIED and denied:
        return access_denied(denied, needs)
    if code == UNAUTHENTICATED:
        return credentials_refused()
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if code == PERMISSION_DENIED:
        first = f"user '{tracking_user()}' refused: {first}"
    wrapped = TrackingError(f"MLflow at {safe_tracking_uri()}: {redact(first)}")
    wrapped.retryable = code not in PERMANENT_ERRORS
    return wrapped


def check_reachable(timeout_s: float = 5.0) -> None:
    """Fail in one line when a tracking server (http/https URI) does not answer its health check.

    Embedded stores (sqlite, a database URI) have nothing to ping; their errors come on first use.
    """
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    where = f"MLflow tracking server {safe_tracking_uri()}"
    try:
        answer = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
    except requests.Timeout:
        raise TrackingError(f"{where} is unreachable (no answer within {timeout_s:g} s)") from None
    except requests.RequestException as e:
        reason = "connection refused" if "refused" in str(e).lower() else type(e).__name__
        raise TrackingError(f"{where} is unreachable ({reason})") from None
    if answer.status_code in (401, 403):
        error = TrackingError(f"{where} refused the credentials (HTTP {answer.status_code})")
        error.retryable = False
        raise error
    if answer.status_code != 200:
        raise TrackingError(f"{where} is not healthy (HTTP {answer.status_code} on /health)")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded sqlite store in the working directory.

    The default is made absolute here: MLflow caches one store per URI string for the life of the
    process, so a relative `sqlite:///mlflow.db` would keep writing to whichever directory was
    current when it was first opened.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str(Path.cwd() / DEFAULT_TRACKING_URI.removeprefix("sqlite:///"))
