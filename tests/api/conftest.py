"""A live API on loopback: real loops (recipe only, simulated E. coli plants), the embedded
historian, uvicorn in a thread on a free 127.0.0.1 port, httpx as the client."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from bpcontrol.cli_serve import Served, build_served
from bpcontrol.records import RunIdentity
from bpcontrol.runspec import spec_for
from services.api.app import PREFIX, create_app
from services.api.audit import AuditChain
from services.api.auth import Role, User, UserStore, hash_password
from services.api.settings import ApiSettings

PASSWORDS = {role.name.lower(): f"pw-{role.name.lower()}-0123456789" for role in Role}
SECRET = "test-secret-" + "x" * 60


@functools.cache
def _users() -> UserStore:
    """One user per role (name = role), hashed once per test session (argon2 is slow)."""
    return UserStore(
        {name: User(name, Role.parse(name), hash_password(pw)) for name, pw in PASSWORDS.items()}
    )


def make_settings(**options: object) -> ApiSettings:
    """Settings with one user per role (name = role), known passwords."""
    opts: dict[str, object] = {"write_burst": 100_000, "write_rate_per_s": 1000.0}
    opts.update(options)
    return ApiSettings(users=_users(), secret=SECRET, **opts)  # type: ignore[arg-type]


def served_reactor(
    root: Path, name: str, *, speed_up: float, seed: int = 1, duration_h: float | None = None
) -> Served:
    """One recipe-only E. coli loop (not started) with its historian in ``root/name``
    (``duration_h``: hours to run, default the batch)."""
    identity = RunIdentity.start(site="test", reactor=name, batch_id=f"B-{name}")
    spec = spec_for("ecoli_fedbatch", identity=identity, seed=seed, controller="recipe")
    return build_served(spec, folder=root / name, speed_up=speed_up, duration_h=duration_h)


@dataclass
class Live:
    """A running API: its URL, tokens per role, the reactors and the audit file."""

    base: str
    served: Sequence[Served]
    audit_path: Path
    tokens: dict[str, str]
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, role: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.base + PREFIX, headers=headers, timeout=30.0)


def start_server(
    served: Sequence[Served], audit_path: Path, settings: ApiSettings
) -> tuple[uvicorn.Server, threading.Thread, str]:
    """uvicorn serving the app in a thread on a free loopback port; returns its base URL."""
    app = create_app(
        settings=settings, reactors=[s.handle for s in served], audit=AuditChain(audit_path)
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # NODELAY
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def stop_server(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(30)
    assert not thread.is_alive(), "uvicorn did not stop"


def login(base: str, role: str) -> str:
    reply = httpx.post(
        f"{base}{PREFIX}/token", data={"username": role, "password": PASSWORDS[role]}
    )
    assert reply.status_code == 200, reply.text
    token: str = reply.json()["access_token"]
    return token


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Two reactors (R1, R2) running at 600x (one tick per 0.1 s) behind a live API."""
    root = tmp_path_factory.mktemp("live")
    served = [served_reactor(root, n, speed_up=600.0, seed=k) for k, n in enumerate(["R1", "R2"])]
    server, thread, base = start_server(served, root / "audit.jsonl", make_settings())
    for s in served:
        s.start()
    tokens = {role: login(base, role) for role in PASSWORDS}
    try:
        yield Live(base, served, root / "audit.jsonl", tokens, server, thread)
    finally:
        stop_server(server, thread)
        for s in served:
            s.stop("test over")
