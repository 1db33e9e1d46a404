"""The API's settings: users, token secret, limits; unsafe defaults are refused.

A settings file (TOML) names the secret and the users; there are no default credentials::

    [api]
    secret_file = "/etc/bpcontrol/api.secret"  # or secret = "..." (>= 32 bytes)
    token_ttl_s = 900                          # token lifetime (s)
    cors_origins = []                          # closed by default
    write_rate_per_s = 2.0                     # writes per user: sustained rate (1/s)
    write_burst = 10                           # ... and burst
    [[users]]
    name = "ana"
    role = "operator"                          # viewer, operator, engineer or admin
    password_hash = "$argon2id$v=19$..."       # `bpcontrol serve --hash-password`

Outside demo mode the service refuses to start without a secret of at least 32 bytes and
at least one user. Demo mode (:func:`demo_settings`) makes a random secret and one user
per role with random passwords, printed once at start; it serves loopback only.
"""

from __future__ import annotations

import math
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.api.auth import MIN_SECRET_BYTES, Role, User, UserStore, hash_password

__all__ = ["ApiSettings", "SettingsError", "demo_settings", "load_settings"]


class SettingsError(ValueError):
    """Settings that are missing or unsafe; the message names the file and key."""


@dataclass(frozen=True)
class ApiSettings:
    """Everything the app needs to know (validated on construction).

    Attributes:
        users: the configured users.
        secret: the HS256 token key (>= 32 bytes).
        token_ttl_s: token lifetime (s).
        cors_origins: origins allowed by CORS (empty: CORS closed).
        write_rate_per_s: sustained writes per user (1/s).
        write_burst: writes a user may make at once before the rate applies.
        write_timeout_s: longest wait (wall s) for the loop to carry out a write before
            answering 202 (the audit file records the outcome when it comes).
        stream_queue: records buffered per stream client; a client that falls this far
            behind is dropped (with a message), never the loop.
        demo: demo mode (random credentials, loopback only).
        tls: whether the server runs with TLS (adds Strict-Transport-Security).
    """

    users: UserStore
    secret: str
    token_ttl_s: float = 900.0
    cors_origins: tuple[str, ...] = ()
    write_rate_per_s: float = 2.0
    write_burst: int = 10
    write_timeout_s: float = 10.0
    stream_queue: int = 10_000
    demo: bool = False
    tls: bool = False
    demo_passwords: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.secret.encode("utf-8")) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"api.secret must be at least {MIN_SECRET_BYTES} bytes; "
                "make one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        if len(self.users) == 0:
            raise SettingsError("no [[users]] configured; the API has no default credentials")
        for name in ("token_ttl_s", "write_rate_per_s", "write_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SettingsError(f"api.{name} must be a number > 0, got {value!r}")
        for name in ("write_burst", "stream_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"api.{name} must be an integer >= 1, got {value!r}")
        if "*" in self.cors_origins:
            raise SettingsError("api.cors_origins must name origins; '*' is not allowed")


_API_KEYS = {
    "secret",
    "secret_file",
    "token_ttl_s",
    "cors_origins",
    "write_rate_per_s",
    "write_burst",
    "write_timeout_s",
    "stream_queue",
}


def load_settings(path: str | Path, *, tls: bool = False) -> ApiSettings:
    """Read a settings file (raises :class:`SettingsError` naming the file and key)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the API settings ({exc})") from None
    try:
        return _parse(doc, path, tls)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None


def _parse(doc: Mapping[str, Any], path: Path, tls: bool) -> ApiSettings:
    unknown = sorted(set(doc) - {"api", "users"})
    if unknown:
        raise SettingsError(f"unknown tables {unknown}; use [api] and [[users]]")
    api = doc.get("api", {})
    if not isinstance(api, dict):
        raise SettingsError("api must be a table")
    bad = sorted(set(api) - _API_KEYS)
    if bad:
        raise SettingsError(f"api: unknown keys {bad}; known: {sorted(_API_KEYS)}")
    secret = api.get("secret")
    if "secret_file" in api:
        if secret is not None:
            raise SettingsError("api: give secret or secret_file, not both")
        secret_path = (path.parent / str(api["secret_file"])).resolve()
        try:
            secret = secret_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            raise SettingsError(f"api.secret_file: cannot read {secret_path} ({exc})") from None
    if not isinstance(secret, str):
        raise SettingsError("api.secret (or api.secret_file) is required")
    users = _users(doc.get("users", []))
    options = {k: api[k] for k in api if k not in ("secret", "secret_file")}
    if "cors_origins" in options:
        origins = options["cors_origins"]
        if not (isinstance(origins, list) and all(isinstance(o, str) for o in origins)):
            raise SettingsError("api.cors_origins must be a list of origins")
        options["cors_origins"] = tuple(origins)
    return ApiSettings(users=UserStore(users), secret=secret, tls=tls, **options)


def _users(items: object) -> dict[str, User]:
    if not isinstance(items, list):
        raise SettingsError("users must be an array of tables ([[users]])")
    users: dict[str, User] = {}
    for k, item in enumerate(items):
        where = f"users[{k}]"
        if not isinstance(item, dict) or set(item) != {"name", "role", "password_hash"}:
            raise SettingsError(f"{where}: needs exactly name, role and password_hash")
        name, role, digest = item["name"], item["role"], item["password_hash"]
        if not (isinstance(name, str) and name.strip()) or name in users:
            raise SettingsError(f"{where}.name must be a unique non-empty name, got {name!r}")
        if not (isinstance(digest, str) and digest.startswith("$argon2")):
            raise SettingsError(f"{where}.password_hash must be an argon2 hash")
        try:
            users[name] = User(name, Role.parse(role), digest)
        except ValueError as exc:
            raise SettingsError(f"{where}.role: {exc}") from None
    return users


def demo_settings(**options: Any) -> ApiSettings:
    """Demo mode: a random secret and one user per role (``viewer``, ``operator``, ...)
    with random passwords, kept in ``demo_passwords`` to print once."""
    passwords = {role.name.lower(): secrets.token_urlsafe(12) for role in Role}
    users = {
        name: User(name, Role.parse(name), hash_password(pw)) for name, pw in passwords.items()
    }
    return ApiSettings(
        users=UserStore(users),
        secret=secrets.token_urlsafe(48),
        demo=True,
        demo_passwords=passwords,
        **options,
    )
