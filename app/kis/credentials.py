"""KIS app credentials: where they come from, and the promise that they never leak.

The app key and app secret are :class:`pydantic.SecretStr` from the moment they are read: their ``repr`` and
``str`` are ``'**********'``, and every error in this module names the *variable* or *file* at fault, never a
value. They come from the environment (``OBSERVER_KIS_APP_KEY`` / ``OBSERVER_KIS_APP_SECRET``) or from a
secrets file outside the git checkout (or under its ignored ``.local/``) that only its owner can read.

``app_key_id`` is the non-secret label of an app key ("main", "alt1"): it names the key in metrics, Kafka
keys, logs and the token cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from app.config import PROJECT_ROOT, ConfigError, Settings

ENV_APP_KEY = "OBSERVER_KIS_APP_KEY"
ENV_APP_SECRET = "OBSERVER_KIS_APP_SECRET"
ENV_APP_KEY_ID = "OBSERVER_KIS_APP_KEY_ID"
ENV_SECRETS_FILE = "OBSERVER_KIS_SECRETS_FILE"
DEFAULT_APP_KEY_ID = "main"

# Keys accepted in a secrets file, each mapped to the variable it stands for. TOML files may use the short
# names, at top level or in a [kis] table; env-style files use the variable names (``export`` allowed).
_FILE_KEYS: dict[str, str] = {
    ENV_APP_KEY: ENV_APP_KEY,
    "app_key": ENV_APP_KEY,
    "appkey": ENV_APP_KEY,
    ENV_APP_SECRET: ENV_APP_SECRET,
    "app_secret": ENV_APP_SECRET,
    "appsecret": ENV_APP_SECRET,
    ENV_APP_KEY_ID: ENV_APP_KEY_ID,
    "app_key_id": ENV_APP_KEY_ID,
}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class CredentialsError(ConfigError):
    """Credentials are missing, malformed or stored unsafely. The message never contains a secret."""


class KisCredentials(BaseModel):
    """One KIS app key. ``repr``/``str`` show the label only; the secrets print as ``'**********'``."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    app_key_id: str
    app_key: SecretStr
    app_secret: SecretStr

    @field_validator("app_key_id")
    @classmethod
    def _label_is_safe(cls, value: str) -> str:
        if not _LABEL.fullmatch(value):
            raise ValueError("app_key_id must be 1-32 of [A-Za-z0-9_.-], starting with a letter or digit")
        return value

    @field_validator("app_key", "app_secret")
    @classmethod
    def _secret_is_plausible(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text or text != text.strip() or any(c.isspace() for c in text):
            raise ValueError("must be non-empty and contain no whitespace")
        return value

    def fingerprint(self) -> str:
        """A short, one-way digest of the app key (not the key): tells two keys apart in caches and ledgers."""
        return key_fingerprint(self.app_key.get_secret_value())


def key_fingerprint(app_key: str) -> str:
    return hashlib.sha256(b"kis-app-key\0" + app_key.encode()).hexdigest()[:16]


def load_credentials(
    env: Mapping[str, str],
    secrets_file: Path | None = None,
    *,
    app_key_id: str | None = None,
    repo_root: Path = PROJECT_ROOT,
) -> KisCredentials:
    """The app key and secret from ``env`` (``OBSERVER_KIS_APP_KEY``/``_SECRET``), else from a secrets file.

    ``secrets_file`` (or ``OBSERVER_KIS_SECRETS_FILE`` in ``env``) is read only if it lies outside the git
    checkout (or under its ``.local/``) and no one but its owner can read it. A variable set in ``env`` wins
    over the file. ``app_key_id`` defaults to ``OBSERVER_KIS_APP_KEY_ID``, the file's ``app_key_id``, "main".
    """
    if secrets_file is None and env.get(ENV_SECRETS_FILE):
        secrets_file = Path(env[ENV_SECRETS_FILE])
    from_file: dict[str, str] = {}
    if secrets_file is not None and not (env.get(ENV_APP_KEY) and env.get(ENV_APP_SECRET)):
        from_file = read_secrets_file(secrets_file, repo_root=repo_root)
    source = f"the environment or {secrets_file}" if secrets_file is not None else "the environment"

    def pick(name: str) -> str:
        value = env.get(name) or from_file.get(name)
        if not value:
            hint = "" if secrets_file is not None else f" (or point {ENV_SECRETS_FILE} at a secrets file)"
            raise CredentialsError(f"{name} is not set in {source}{hint}")
        return value.strip()

    app_key, app_secret = pick(ENV_APP_KEY), pick(ENV_APP_SECRET)
    label = app_key_id or env.get(ENV_APP_KEY_ID) or from_file.get(ENV_APP_KEY_ID) or DEFAULT_APP_KEY_ID
    return _build(label, app_key, app_secret, source)


def _build(label: str, app_key: str, app_secret: str, source: str) -> KisCredentials:
    if not _LABEL.fullmatch(label):
        raise CredentialsError(f"{ENV_APP_KEY_ID}: {label[:40]!r} is not a label of 1-32 [A-Za-z0-9_.-]")
    for name, value in ((ENV_APP_KEY, app_key), (ENV_APP_SECRET, app_secret)):
        if not value or any(c.isspace() for c in value):
            raise CredentialsError(f"{name} from {source} is empty or contains whitespace")
    return KisCredentials(app_key_id=label, app_key=SecretStr(app_key), app_secret=SecretStr(app_secret))


def read_secrets_file(path: Path, *, repo_root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Variables from a TOML (``*.toml``) or env-style (``NAME=value``) file, after the safety checks."""
    resolved = _check_location(path, repo_root)
    try:
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise CredentialsError(f"secrets file {path} does not exist") from None
    except OSError as exc:
        raise CredentialsError(f"secrets file {path} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CredentialsError(f"secrets file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise CredentialsError(
                f"secrets file {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run: chmod 600 {path}"
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise CredentialsError(f"secrets file {path} is not owned by the user running this process")
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"secrets file {path} is not UTF-8 text") from None
    if resolved.suffix == ".toml":
        return _parse_toml(text, path)
    return _parse_env(text, path)


def _check_location(path: Path, repo_root: Path) -> Path:
    resolved = path.expanduser().resolve()
    roots = {repo_root.resolve()}
    for parent in resolved.parents:
        if (parent / ".git").exists():
            roots.add(parent)
            break
    for root in roots:
        if resolved.is_relative_to(root) and not resolved.is_relative_to(root / ".local"):
            raise CredentialsError(
                f"secrets file {path} is inside the git checkout {root}; keep it outside the repository "
                f"or under {root / '.local'} (ignored by git)"
            )
    return resolved


def _parse_toml(text: str, path: Path) -> dict[str, str]:
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages carry a position, never the offending text.
        raise CredentialsError(f"secrets file {path} is not valid TOML: {exc}") from None
    kis_table = doc.get("kis")
    table: dict[str, Any] = kis_table if isinstance(kis_table, dict) else doc
    out: dict[str, str] = {}
    for key, value in table.items():
        name = _FILE_KEYS.get(key)
        if name is None:
            continue
        if not isinstance(value, str):
            raise CredentialsError(f"secrets file {path}: {key} must be a string")
        out[name] = value
    return out


def _parse_env(text: str, path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE.match(stripped)
        if match is None:
            raise CredentialsError(f"secrets file {path} line {line_no} is not NAME=value")
        key, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        name = _FILE_KEYS.get(key)
        if name is not None:
            out[name] = value
    return out


# ------------------------------------------------------------------------------------------ simulator


def simulator_credentials(app_key_id: str) -> KisCredentials:
    """Deterministic fake credentials for ``app_key_id`` (36-char key, 180-char secret), as the simulator
    issues them; the same label always gives the same pair, different labels different pairs."""
    if not _LABEL.fullmatch(app_key_id):
        raise CredentialsError(f"app_key_id {app_key_id[:40]!r} is not a label of 1-32 [A-Za-z0-9_.-]")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

    def stream(tag: str, n: int) -> str:
        out: list[str] = []
        counter = 0
        while len(out) < n:
            digest = hashlib.sha256(f"kis-sim\0{tag}\0{app_key_id}\0{counter}".encode()).digest()
            out.extend(alphabet[b % len(alphabet)] for b in digest)
            counter += 1
        return "".join(out[:n])

    app_key = "PS" + stream("appkey", 34)
    app_secret = stream("appsecret", 180)
    return KisCredentials(app_key_id=app_key_id, app_key=SecretStr(app_key), app_secret=SecretStr(app_secret))


def choose_credentials(settings: Settings, env: Mapping[str, str]) -> KisCredentials:
    """Real credentials when configured; the simulator's fake ones only for a loopback KIS or with
    ``OBSERVER_KIS_SIMULATOR`` set."""
    if any(k in env for k in ("OBSERVER_KIS_APP_KEY", "OBSERVER_KIS_APP_SECRET", "OBSERVER_KIS_SECRETS_FILE")):
        return load_credentials(env, None, app_key_id=settings.bridge_app_key_id)
    host = urlsplit(settings.kis_rest_url).hostname or ""
    if settings.kis_simulator or host in ("127.0.0.1", "localhost", "::1"):
        return simulator_credentials(settings.bridge_app_key_id)
    raise ConfigError(
        f"no KIS credentials for {settings.kis_rest_url}: set OBSERVER_KIS_APP_KEY and "
        "OBSERVER_KIS_APP_SECRET, or OBSERVER_KIS_SECRETS_FILE"
    )
