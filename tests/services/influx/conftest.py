"""Fixtures of the InfluxDB historian tests: a real ``influxd`` on loopback.

``influx_server`` is one server for the whole module set (its data in a session temporary
folder; each test uses its own database); ``own_influx`` is a server of a test alone, for
the tests that stop and restart it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from influx_server import InfluxServer


@pytest.fixture(scope="session")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """A running ``influxd`` shared by the tests (stopped by PID at the end)."""
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """A running ``influxd`` of this test alone (it may stop and start it)."""
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database() -> str:
    """A fresh database name per test."""
    return f"t_{uuid.uuid4().hex[:12]}"
