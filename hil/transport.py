"""A scenario's plant behind a real protocol: the OPC UA or MQTT simulated device and its
gateway.

With ``transport = "opcua"`` the rig (or the bare simulated plant) is served by
:class:`hil.device_server.DeviceServer` on 127.0.0.1 (Basic256Sha256 SignAndEncrypt,
certificates made for the run in its folder, a user and a password) and the loop reaches
it through :class:`services.edge.opcua_gateway.OpcUaPlant`, as ``bpcontrol run --plant
opcua://...`` does.

The device's clock is shared with the loop's in one of two ways:

- **lockstep** (``speed_up`` infinite, the default): the loop runs on its simulated clock
  and :class:`LockstepPlant` steps the device's :class:`bpcontrol.clock.SteppedClock` to
  each tick's time before the gateway reads, waiting until the device has published that
  instant's samples. Every reading, setpoint, confirmation and heartbeat still crosses the
  network; only process time is shared in-process. The run is as fast as the work allows,
  no sample is skipped while the loop solves, and it is reproducible (it gives what the
  in-process run gives).
- **paced** (a finite ``speed_up``): the device runs on its own paced clock, started by
  the controller's first command as the loop's clock is, so the two share process time to
  the wall-clock jitter between them: such a run is not reproducible to 1e-9, and the
  gateway sees only each sensor's latest sample at a tick (one taken while the loop
  solves is skipped). Use it where wall time is the point (a hung call, a heartbeat gap).

With ``transport = "mqtt"`` the run starts its own Mosquitto on 127.0.0.1 (a free port,
logins made for the run, an ACL per reactor: :mod:`services.edge.broker`), the
:class:`hil.device_mqtt.DeviceMqtt` on it, and the loop reaches it through
:class:`services.edge.mqtt_gateway.MqttPlant` (MQTT 5, QoS 1 commands, confirmations),
as ``bpcontrol run --plant mqtt://...`` does.

The device mapping of a run (:func:`mapping_for`) is the one shipped with the edge
gateways for its model where there is one (:data:`MAPPINGS`: the E. coli reactor's, with
its vendor units and scaling), else the identity mapping of the model
(:func:`services.edge.mapping.identity_mapping`: every input and measured output under
its own name, in model units) with the recipe's fallback at 0 h as the device's safe
setpoints: any model, a user's own included, runs through either protocol.
"""

from __future__ import annotations

import math
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bpcontrol.clock import PacedClock, SteppedClock
from bpcontrol.interfaces import Clock, Plant
from estimators import Reading

if TYPE_CHECKING:
    from bpcontrol.runspec import ResolvedRun
    from services.edge.mapping import DeviceMapping

__all__ = [
    "MAPPINGS",
    "TRANSPORTS",
    "LockstepPlant",
    "close",
    "kpis",
    "layer",
    "mapping_for",
    "mapping_path",
    "mqtt_layer",
    "opcua_layer",
]

TRANSPORTS = ("inprocess", "opcua", "mqtt")
"""How the loop reaches the plant: in-process calls, the OPC UA device and gateway, or the
MQTT device and gateway through a Mosquitto of the run's own."""

_EDGE_DATA = Path(__file__).resolve().parents[1] / "services" / "edge" / "data"
MAPPINGS = {"ecoli_fedbatch": "ecoli_reactor.toml"}
"""The device mappings shipped with the edge gateways, per model (services/edge/data);
every other model gets its identity mapping (:func:`mapping_for`)."""


def mapping_path(model_name: str) -> Path | None:
    """The shipped device mapping for ``model_name`` (None: there is none)."""
    name = MAPPINGS.get(model_name)
    return None if name is None else _EDGE_DATA / name


def mapping_for(run: ResolvedRun) -> DeviceMapping:
    """The device mapping of ``run``: the shipped file of its model (:data:`MAPPINGS`), else
    the model's identity mapping whose safe setpoints (model units) are the recipe's
    fallback at 0 h clipped into the inputs' declared bounds. Raises
    :class:`services.edge.mapping.MappingError` (one line naming the file or the model
    and the key) when the mapping cannot be built."""
    from services.edge.mapping import identity_mapping, load_mapping

    path = mapping_path(run.model.name)
    if path is not None:
        return load_mapping(path, run.model)
    lo, hi = run.model.bounds("inputs")
    safe = np.clip(np.asarray(run.recipe.fallback(0.0), dtype=float), lo, hi)
    return identity_mapping(
        run.model,
        safe,
        source=f"identity mapping of model {run.model.name} (safe: the recipe's fallback at 0 h)",
    )


_LOCKSTEP_WAIT_S = 10.0
"""Wall s a gateway waits, in lockstep, for the step's samples it knows are published."""


class SteppedDevice(Protocol):
    """What a device in lockstep offers its layer (both simulated devices have it)."""

    def step_to(self, t_h: float, timeout_s: float = 10.0) -> None:
        """Move the device's clock to ``t_h`` (h) and publish that instant's samples."""
        ...


@dataclass
class LockstepPlant:
    """The gateway to a device in lockstep with the loop: each read first steps the
    device's clock to the tick's time (the device publishes that instant's samples), then
    reads them through the gateway; setpoints go through the gateway as they come."""

    gateway: Plant
    device: SteppedDevice

    @property
    def input_names(self) -> tuple[str, ...]:
        """The gateway's inputs."""
        return tuple(self.gateway.input_names)

    def read(self, t_h: float) -> Sequence[Reading]:
        """Step the device to ``t_h`` (h), then the gateway's new samples."""
        self.device.step_to(t_h)
        return self.gateway.read(t_h)

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """The gateway's apply (the device applies at its clock, the last step's time)."""
        return self.gateway.apply(t_h, setpoints)


def _device_clock(speed_up: float) -> Clock:
    """A device's clock: stepped by the loop (lockstep) when ``speed_up`` is inf, else
    paced at ``speed_up``."""
    return SteppedClock() if math.isinf(speed_up) else PacedClock(speed_up)


def _in_lockstep(gateway: Plant, device: Any, speed_up: float) -> Plant:
    return LockstepPlant(gateway, device) if math.isinf(speed_up) else gateway


def opcua_layer(
    run_dir: Path, speed_up: float, mapping: DeviceMapping, made: dict[str, Any]
) -> Callable[[Plant], Plant]:
    """A ``wrap_plant`` layer that serves the plant on an OPC UA device (``mapping``: its
    nodes) paced at ``speed_up`` (process s per wall s; inf: in lockstep with the loop,
    :class:`LockstepPlant`) and returns the gateway to it;
    ``made`` receives ``device``, ``gateway`` and ``pki`` (the caller closes them:
    :func:`close`)."""
    from hil.device_server import DeviceSecurity, DeviceServer
    from services.edge.opcua_gateway import ClientSecurity, OpcUaPlant
    from services.edge.pki import make_certificate

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
            _device_clock(speed_up),
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
            sample_wait_s=_LOCKSTEP_WAIT_S if math.isinf(speed_up) else 0.05,
        )
        made["gateway"] = gateway
        return _in_lockstep(gateway, device, speed_up)

    return wrap


def layer(
    transport: str, run_dir: Path, speed_up: float, run: ResolvedRun, made: dict[str, Any]
) -> Callable[[Plant], Plant] | None:
    """The ``wrap_plant`` layer of ``transport`` for ``run`` (None: in-process), on the
    run's device mapping (:func:`mapping_for`), paced at ``speed_up`` (process s per
    wall s; inf: the device in lockstep with the loop's simulated clock)."""
    if transport == "inprocess":
        return None
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    mapping = mapping_for(run)
    if transport == "opcua":
        return opcua_layer(run_dir, speed_up, mapping, made)
    return mqtt_layer(run_dir, speed_up, mapping, made)


def mqtt_layer(
    run_dir: Path, speed_up: float, mapping: DeviceMapping, made: dict[str, Any]
) -> Callable[[Plant], Plant]:
    """A ``wrap_plant`` layer that serves the plant on an MQTT device (``mapping``: its
    topics) behind a Mosquitto of the run's own, paced at ``speed_up`` (process s per
    wall s; inf: in lockstep with the loop), and returns the gateway to it; ``made``
    receives ``broker``, ``device``, ``gateway`` and ``secrets`` (the broker's folder:
    :func:`close` removes it)."""
    from hil.device_mqtt import DeviceMqtt
    from services.edge.broker import reactor_logins, start_mosquitto
    from services.edge.mqtt_gateway import MqttPlant, MqttSecurity

    topics = mapping.mqtt
    if topics is None:
        raise ValueError(
            f"transport mqtt: {mapping.source}: no [mqtt] table (prefix, site, reactor)"
        )

    def wrap(plant: Plant) -> Plant:
        folder = run_dir / "mosquitto"
        made["secrets"] = folder
        logins = reactor_logins(topics, mapping.name)  # this run's only
        users, ctl, dev = logins.users, logins.controller, logins.device
        broker = start_mosquitto(folder, users, logins.acl)
        made["broker"] = broker
        device = DeviceMqtt(
            plant,
            _device_clock(speed_up),
            mapping,
            host="127.0.0.1",
            port=broker.port,
            security=MqttSecurity(dev, users[dev]),
            start_on_first_command=True,
        )
        device.start()
        made["device"] = device
        gateway = MqttPlant(
            "127.0.0.1",
            broker.port,
            mapping,
            security=MqttSecurity(ctl, users[ctl]),
            sample_wait_s=_LOCKSTEP_WAIT_S if math.isinf(speed_up) else 0.05,
        )
        made["gateway"] = gateway
        return _in_lockstep(gateway, device, speed_up)

    return wrap


def kpis(transport: str, speed_up: float, made: Mapping[str, Any]) -> dict[str, Any]:
    """What the network carried in a run (KPIs): the transport and its clock
    (``lockstep`` or ``paced``), the setpoint writes the gateway sent and the device
    confirmed with the median confirmation time (wall ms), the commands the device applied
    and how often it fell back to its safe setpoints."""
    if transport == "inprocess":
        return {"transport": "inprocess"}
    out: dict[str, Any] = {
        "transport": transport,
        "transport_clock": "lockstep" if math.isinf(speed_up) else "paced",
    }
    gateway, device = made.get("gateway"), made.get("device")
    if gateway is not None:
        sent = list(gateway.exchanges)
        confirmed = [e.confirm_s for e in sent if e.confirmed]
        out["gateway_writes"] = len(sent)
        out["gateway_writes_confirmed"] = len(confirmed)
        out["gateway_confirm_median_ms"] = (
            float(np.median(confirmed)) * 1e3 if confirmed else math.nan
        )
    if device is not None:
        out["device_commands_applied"] = sum(1 for e in device.write_log if e.command_id != 0)
        out["device_safe_events"] = len(device.safe_events)
    return out


def close(made: dict[str, Any]) -> None:
    """Close the gateway, stop the device and the broker of a layer (those that exist), and
    remove the run's certificates, keys and broker logins (good for this run only)."""
    try:
        if "gateway" in made:
            made["gateway"].close()
    finally:
        try:
            if "device" in made:
                made["device"].stop()
        finally:
            if "broker" in made:
                made["broker"].stop()
            for key in ("pki", "secrets"):
                if key in made:
                    shutil.rmtree(made[key], ignore_errors=True)
