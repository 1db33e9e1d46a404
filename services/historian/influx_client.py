"""Where the InfluxDB historian writes: its configuration and a small v1-API HTTP client.

The client speaks the v1 HTTP API (``POST /write`` with line protocol, ``/query`` with
InfluxQL), which InfluxDB 1.x serves natively and 2.x (v1 compatibility, DBRP mapping) and
3.x serve too. It is built on ``httpx`` (already a dependency of the project for the live
API's tests): one ``httpx.Client`` keeps its connection alive between batches, has a
connect timeout and a read timeout, verifies TLS certificates unless told not to, and is
synchronous, which is what the historian's forwarder thread wants.

Configuration (:class:`InfluxConfig`) comes from a TOML file (table ``[influx]``) and/or
environment variables; credentials are never part of the code:

=========================== ================================ ===================================
TOML key (``[influx]``)     environment variable             meaning
=========================== ================================ ===================================
``url``                     ``BPCONTROL_INFLUX_URL``         base URL, ``https://host:8086``
``database``                ``BPCONTROL_INFLUX_DATABASE``    database (one per environment)
``username``                ``BPCONTROL_INFLUX_USERNAME``    v1 user (HTTP basic auth)
``password``                ``BPCONTROL_INFLUX_PASSWORD``    its password
``token``                   ``BPCONTROL_INFLUX_TOKEN``       API token (2.x, 3.x): sent as
                                                             ``Authorization: Token ...``
``verify_tls``              ``BPCONTROL_INFLUX_VERIFY_TLS``  verify the server certificate
                                                             (default true)
``ca_file``                 ``BPCONTROL_INFLUX_CA_FILE``     CA bundle for a private CA
``timeout_s``               ``BPCONTROL_INFLUX_TIMEOUT_S``   read timeout of one request (s)
``create_database``         ``BPCONTROL_INFLUX_CREATE_DB``   ``CREATE DATABASE`` when missing
=========================== ================================ ===================================

In the file, ``password_env`` and ``token_env`` name an environment variable to read the
secret from instead of writing it into the file. Environment variables override the file.
"""

from __future__ import annotations

import math
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import httpx

__all__ = [
    "InfluxClient",
    "InfluxConfig",
    "InfluxConfigError",
    "InfluxQueryError",
    "load_config",
]

_ENV: Final = {
    "url": "BPCONTROL_INFLUX_URL",
    "database": "BPCONTROL_INFLUX_DATABASE",
    "username": "BPCONTROL_INFLUX_USERNAME",
    "password": "BPCONTROL_INFLUX_PASSWORD",
    "token": "BPCONTROL_INFLUX_TOKEN",
    "verify_tls": "BPCONTROL_INFLUX_VERIFY_TLS",
    "ca_file": "BPCONTROL_INFLUX_CA_FILE",
    "timeout_s": "BPCONTROL_INFLUX_TIMEOUT_S",
    "create_database": "BPCONTROL_INFLUX_CREATE_DB",
}
_FILE_ONLY: Final = ("password_env", "token_env")


class InfluxConfigError(ValueError):
    """A configuration value that cannot be used; one line naming the file or variable and key."""


class InfluxQueryError(RuntimeError):
    """The server answered a query with an error (or could not be reached: ``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InfluxConfig:
    """How to reach the InfluxDB server (see the module docstring for the sources).

    Secrets (``password``, ``token``) are left out of ``repr``.
    """

    url: str = "http://127.0.0.1:8086"
    database: str = "bpcontrol"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    verify_tls: bool = True
    ca_file: str | None = None
    timeout_s: float = 10.0
    create_database: bool = True

    def __post_init__(self) -> None:
        if not (self.url.startswith("http://") or self.url.startswith("https://")):
            raise InfluxConfigError(f"url must start with http:// or https://, got {self.url!r}")
        if not self.database or '"' in self.database or "\n" in self.database:
            raise InfluxConfigError(
                f"database must be a plain non-empty name, got {self.database!r}"
            )
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise InfluxConfigError(f"timeout_s must be a number > 0 (s), got {self.timeout_s!r}")
        if self.password is not None and self.username is None:
            raise InfluxConfigError("password is given without username")


def _bool(where: str, key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise InfluxConfigError(f"{where}: {key} must be true or false, got {value!r}")


def _coerce(where: str, key: str, value: object) -> Any:
    """A TOML or environment value as the type of :class:`InfluxConfig`'s field ``key``."""
    if key in ("verify_tls", "create_database"):
        return _bool(where, key, value)
    if key == "timeout_s":
        if isinstance(value, bool):
            raise InfluxConfigError(f"{where}: {key} must be a number of seconds, got {value!r}")
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InfluxConfigError(
                f"{where}: {key} must be a number of seconds, got {value!r}"
            ) from None
    if not isinstance(value, str):
        raise InfluxConfigError(f"{where}: {key} must be text, got {value!r}")
    return value


def load_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> InfluxConfig:
    """The configuration from the TOML file ``path`` (table ``[influx]``), then ``env``.

    Raises:
        InfluxConfigError: an unreadable file, an unknown key, a value of the wrong type, a
            ``password_env``/``token_env`` naming an unset variable (the message names the
            file or variable and the key).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InfluxConfigError(f"{p}: cannot read the configuration: {exc}") from None
        table = doc.get("influx")
        if not isinstance(table, Mapping):
            raise InfluxConfigError(f"{p}: no [influx] table")
        for key, value in table.items():
            where = f"{p}: [influx]"
            if key in _FILE_ONLY:
                name = _coerce(where, key, value)
                if name not in env:
                    raise InfluxConfigError(
                        f"{where} {key}: environment variable {name!r} is not set"
                    )
                values[key.removesuffix("_env")] = env[name]
            elif key in _ENV:
                values[key] = _coerce(where, key, value)
            else:
                known = ", ".join([*_ENV, *_FILE_ONLY])
                raise InfluxConfigError(f"{where}: unknown key {key!r} (known: {known})")
    for key, var in _ENV.items():
        if var in env and env[var] != "":
            values[key] = _coerce(f"environment {var}", key, env[var])
    try:
        return replace(InfluxConfig(), **values)
    except InfluxConfigError as exc:
        where = f"{path}" if path is not None else "environment"
        raise InfluxConfigError(f"{where}: {exc}") from None


class InfluxClient:
    """A synchronous v1-API client over one keep-alive ``httpx.Client``.

    ``write`` returns the server's response (the caller decides what a status means);
    transport failures (refused, reset, timeout) raise ``httpx.TransportError``.
    """

    def __init__(self, config: InfluxConfig) -> None:
        self.config = config
        verify: ssl.SSLContext | bool
        if not config.verify_tls:
            verify = False
        else:
            verify = ssl.create_default_context(cafile=config.ca_file)
        headers = {"Authorization": f"Token {config.token}"} if config.token else {}
        auth = (
            httpx.BasicAuth(config.username, config.password or "")
            if config.username is not None
            else None
        )
        self._http = httpx.Client(
            base_url=config.url,
            timeout=httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 2.0)),
            verify=verify,
            headers=headers,
            auth=auth,
        )
        self._write_params = {"db": config.database, "precision": "ns"}

    def ping(self) -> bool:
        """Whether the server answers ``/ping`` (with 204, as 1.x and 2.x do, or 200)."""
        try:
            return self._http.get("/ping").status_code in (200, 204)
        except httpx.HTTPError:
            return False

    def write(self, body: bytes) -> httpx.Response:
        """``POST /write?db=..&precision=ns`` with ``body`` (line protocol, UTF-8)."""
        return self._http.post("/write", params=self._write_params, content=body)

    def query(self, q: str, *, write: bool = False) -> list[dict[str, Any]]:
        """Run InfluxQL ``q`` on the configured database; the ``results`` list.

        ``write`` sends it as a POST (needed for ``CREATE``/``DROP``).

        Raises:
            InfluxQueryError: unreachable server, an HTTP error, or an error in a result.
        """
        params = {"q": q, "db": self.config.database, "epoch": "ns"}
        try:
            if write:
                r = self._http.post("/query", data=params)
            else:
                r = self._http.get("/query", params=params)
        except httpx.HTTPError as exc:
            raise InfluxQueryError(f"{self.config.url}: {type(exc).__name__}: {exc}") from exc
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code >= 300 or "error" in body:
            message = body.get("error") if isinstance(body, dict) else None
            raise InfluxQueryError(
                f"{self.config.url}: query {q[:120]!r} answered {r.status_code}: "
                f"{message or r.text[:200]}",
                r.status_code,
            )
        results: list[dict[str, Any]] = body.get("results", [])
        for res in results:
            if "error" in res:
                raise InfluxQueryError(f"{self.config.url}: query {q[:120]!r}: {res['error']}")
        return results

    def create_database(self) -> None:
        """``CREATE DATABASE`` (a no-op when it exists)."""
        self.query(f'CREATE DATABASE "{self.config.database}"', write=True)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def quote_literal(text: str) -> str:
    """``text`` as an InfluxQL string literal (single quotes, backslash-escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    """``name`` as an InfluxQL identifier (double quotes, backslash-escaped)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
