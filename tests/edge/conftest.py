"""Fixtures for the edge tests: certificates, a real Mosquitto, the asyncua device server.

Everything listens on 127.0.0.1 only, on a free port, with its files in a temporary
folder (helpers in ``edge_rig.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_rig import MAPPING, Broker, Pki, device_security, make_pki, start_broker

from bpcontrol.clock import PacedClock
from hil.device_server import DeviceServer
from hil.plant import ecoli_plant
from models import Model, load_model
from services.edge.mapping import DeviceMapping, load_mapping


@pytest.fixture(scope="session")
def model() -> Model:
    """The E. coli fed-batch model of the example mapping."""
    return load_model("ecoli_fedbatch")


@pytest.fixture(scope="session")
def mapping(model: Model) -> DeviceMapping:
    """The example device mapping (services/edge/data/ecoli_reactor.toml)."""
    return load_mapping(MAPPING, model)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Self-signed certificates in a temporary folder (:func:`edge_rig.make_pki`)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _device(model: Model, mapping: DeviceMapping, pki: Pki) -> DeviceServer:
    return DeviceServer(
        ecoli_plant(model, seed=3), PacedClock(600.0), mapping, security=device_security(pki)
    )


PATIENT_HEARTBEAT_TIMEOUT_S = 60.0
"""The shared device's heartbeat timeout (wall s): it hosts no heartbeat test, and a loaded
CI machine once starved the in-process beat past the mapping's 3 s during a SignAndEncrypt
read, dropping the device to safe mid-test; the heartbeat tests use ``own_device``."""


@pytest.fixture(scope="module")
def device(model: Model, mapping: DeviceMapping, pki: Pki) -> Iterator[DeviceServer]:
    """The simulated E. coli reactor on a free 127.0.0.1 port, SignAndEncrypt only, its
    clock 600x (1 min of process time per 0.1 s); shared by the tests of one module that
    leave it up. Not session-wide: its 2 ms poll reads the plant, a core's worth of CPU
    that slowed every later test of the run. Its heartbeat timeout is
    :data:`PATIENT_HEARTBEAT_TIMEOUT_S`."""
    patient = dataclasses.replace(mapping, heartbeat_timeout_s=PATIENT_HEARTBEAT_TIMEOUT_S)
    server = _device(model, patient, pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_device(model: Model, mapping: DeviceMapping, pki: Pki) -> Iterator[DeviceServer]:
    """A device of the test's own (for tests that stop it or lose its heartbeat)."""
    server = _device(model, mapping, pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto for one test (see :func:`start_broker`)."""
    b = start_broker(tmp_path / "mosquitto")
    try:
        yield b
    finally:
        b.stop()
