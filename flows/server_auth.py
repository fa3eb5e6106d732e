"""The secret of ``lmpipe server`` and what a run may touch: auth file, allowed roots, state file.

``lmpipe server`` starts Prefect with basic authentication (Prefect's
``PREFECT_SERVER_API_AUTH_STRING``, ``user:password``): every API call needs the same string as
``PREFECT_API_AUTH_STRING`` and the UI asks for it on first load. The string is generated once
and kept in ``$PREFECT_HOME/lmpipe-auth`` (mode 0600; ``LMPIPE_AUTH_FILE`` names another file)
or taken from ``PREFECT_API_AUTH_STRING`` when that is set. It is never printed or logged:
the banner names the file, and errors name the file, not its content.

``lmpipe server`` also writes ``$PREFECT_HOME/lmpipe-server.json`` (no secret): the API, UI and
artifact-file URLs. ``lmpipe deploy`` / ``lmpipe run`` send the secret only to the API named
there, so a ``PREFECT_API_URL`` pointing elsewhere never receives it.

Runs started by the server's workers may write only under the allowed roots
(``LMPIPE_ALLOWED_ROOTS``, checked where every config validates its ``root``:
:func:`lm.data.storage.check_root`); the artifact file server serves only those roots.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

AUTH_USER = "lmpipe"
# Read by lm.data.storage.check_root in the workers' flow runs (os.pathsep-separated).
ALLOWED_ROOTS_ENV = "LMPIPE_ALLOWED_ROOTS"


def prefect_home(env: Mapping[str, str] | None = None) -> Path:
    return Path((env or {}).get("PREFECT_HOME") or os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def auth_path(home: Path | None = None) -> Path:
    return Path(os.environ.get("LMPIPE_AUTH_FILE") or (home or prefect_home()) / "lmpipe-auth").expanduser()


def state_path(home: Path | None = None) -> Path:
    return (home or prefect_home()) / "lmpipe-server.json"


def read_auth(path: Path | None = None) -> str | None:
    """The saved auth string, or None when there is no file. Refuses a file others can read."""
    path = path or auth_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"{path} holds the server's auth secret but is readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`"
        )
    value = path.read_text().strip()
    if ":" not in value:
        raise ValueError(
            f"{path} must hold `user:password` (Prefect's basic auth string); delete it to generate a new one"
        )
    return value


def load_or_create_auth(path: Path) -> str:
    """``PREFECT_API_AUTH_STRING`` if set, else the saved string, else a new one saved 0600."""
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        return os.environ["PREFECT_API_AUTH_STRING"]
    if (found := read_auth(path)) is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    value = f"{AUTH_USER}:{secrets.token_urlsafe(32)}"
    # O_EXCL: two servers starting at once cannot overwrite each other's secret.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def write_state(home: Path, **urls: str) -> None:
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(urls, indent=2) + "\n")
    tmp.replace(path)


def read_state(home: Path | None = None) -> dict:
    try:
        return json.loads(state_path(home).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def client_auth(api: str) -> str | None:
    """The auth string a client should send to ``api``: ``PREFECT_API_AUTH_STRING`` if set,
    else the saved one, but only when ``api`` is the API that ``lmpipe server`` recorded."""
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        return os.environ["PREFECT_API_AUTH_STRING"]
    if read_state().get("api", "").rstrip("/") != api.rstrip("/"):
        return None
    return read_auth()


def use_saved_auth() -> None:
    """For the CLI: when PREFECT_API_URL names our server, authenticate to it (env only)."""
    api = os.environ.get("PREFECT_API_URL")
    if api and not os.environ.get("PREFECT_API_AUTH_STRING") and (auth := client_auth(api)):
        os.environ["PREFECT_API_AUTH_STRING"] = auth


def allowed_roots_value(roots: list[Path | str]) -> str:
    """``LMPIPE_ALLOWED_ROOTS``: local roots resolved, URL roots (``s3://bucket/prefix``) as given."""
    return ":".join(str(r) if "://" in str(r) else str(Path(r).expanduser().resolve()) for r in roots)
