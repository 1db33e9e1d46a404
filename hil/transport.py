"""A scenario's plant behind a real protocol: the OPC UA simulated device and its gateway.

With ``transport = "opcua"`` the rig (or the bare simulated plant) is served by
:class:`hil.device_server.DeviceServer` on 127.0.0.1 (Basic256Sha256 SignAndEncrypt,
certificates made for the run in its folder, a user and a password) and the loop reaches
it through :class:`services.edge.opcua_gateway.OpcUaPlant`, as ``bpcontrol run --plant
opcua://...`` does. The device runs on its own paced clock at the scenario's
``speed_up``, started by the controller's first command as the loop's clock is, so the
two share process time (to the wall-clock jitter between them: a scenario through the
network is not reproducible to 1e-9, only to the loop's tolerance of that jitter).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpcontrol.clock import PacedClock
from bpcontrol.interfaces import Plant

__all__ = ["MAPPINGS", "TRANSPORTS", "close", "mapping_path", "opcua_layer"]

TRANSPORTS = ("inprocess", "opcua")
"""How the loop reaches the plant: in-process calls, or the OPC UA device and gateway."""

_EDGE_DATA = Path(__file__).resolve().parents[1] / "services" / "edge" / "data"
MAPPINGS = {"ecoli_fedbatch": "ecoli_reactor.toml"}
"""The device mappings shipped with the edge gateways, per model (services/edge/data)."""


def mapping_path(model_name: str) -> Path | None:
    """The shipped device mapping for ``model_name`` (None: there is none)."""
    name = MAPPINGS.get(model_name)
    return None if name is None else _EDGE_DATA / name


def opcua_layer(
    run_dir: Path, speed_up: float, model: Any, made: dict[str, Any]
) -> Callable[[Plant], Plant]:
    """A ``wrap_plant`` layer that serves the plant on an OPC UA device and returns the
    gateway to it; ``made`` receives ``device``, ``gateway`` and ``pki`` (the caller
    closes them: :func:`close`)."""
    from hil.device_server import DeviceSecurity, DeviceServer
    from services.edge.mapping import load_mapping
    from services.edge.opcua_gateway import ClientSecurity, OpcUaPlant
    from services.edge.pki import make_certificate

    path = mapping_path(model.name)
    if path is None:
        raise ValueError(f"transport opcua: no device mapping for model {model.name!r}")
    mapping = load_mapping(path, model)

    def wrap(plant: Plant) -> Plant:
        pki = run_dir / "pki"
        made["pki"] = pki
        device_cert = make_certificate(
            pki / "device", "device", "urn:bpcontrol:hil:device", server=True
        )
        client_cert = make_certificate(
            pki / "controller", "controller", "urn:bpcontrol:hil:controller", server=False
        )
        trusted = pki / "trusted"
        trusted.mkdir(parents=True, exist_ok=True)
        (trusted / "controller.der").write_bytes(client_cert.cert.read_bytes())
        password = secrets.token_urlsafe(16)  # this run's only
        device = DeviceServer(
            plant,
            PacedClock(speed_up),
            mapping,
            security=DeviceSecurity(
                device_cert.cert,
                device_cert.key,
                device_cert.uri,
                trusted,
                {"controller": password},
            ),
            start_on_first_command=True,
        )
        device.start()
        made["device"] = device
        gateway = OpcUaPlant(
            device.endpoint,
            mapping,
            security=ClientSecurity(
                client_cert.cert,
                client_cert.key,
                client_cert.uri,
                device_cert.cert,
                "controller",
                password,
            ),
        )
        made["gateway"] = gateway
        return gateway

    return wrap


def close(made: dict[str, Any]) -> None:
    """Close the gateway and stop the device of :func:`opcua_layer` (those that exist), and
    remove the run's certificates and keys (they were good for this run only)."""
    try:
        if "gateway" in made:
            made["gateway"].close()
    finally:
        if "device" in made:
            made["device"].stop()
        if "pki" in made:
            shutil.rmtree(made["pki"], ignore_errors=True)
