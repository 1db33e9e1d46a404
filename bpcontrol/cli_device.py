"""``bpcontrol device serve``: the simulated bioreactor controller, for a new user to try;
``bpcontrol device mapping``: a device mapping file for any model to start from.

Part of the composition root (it imports ``hil`` and ``services``). It serves the built-in
pack's simulated plant of the mapping's model (the main job's E. coli reactor by default)
over OPC UA (the LADS-shaped device server, Basic256Sha256 SignAndEncrypt, a user login,
only the controller's certificate trusted) or over MQTT (a local Mosquitto it starts: no
anonymous clients, a password file, an ACL for the reactor). Certificates, passwords and
the controller's security file go into ``--folder``; the endpoint and the ``bpcontrol run``
line that drives the device are printed. The device's clock starts with the controller's
first command. Ctrl-C (or SIGTERM) stops it cleanly.
"""

from __future__ import annotations

import secrets
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from bpcontrol.cli_common import parse_speed_up, user_errors

__all__ = ["device_app"]

device_app = typer.Typer(
    help="The simulated bioreactor controller (the device side of the edge gateways).",
    no_args_is_help=True,
)


def _example_mapping() -> Path:
    return Path(__file__).resolve().parents[1] / "services" / "edge" / "data" / "ecoli_reactor.toml"


@device_app.command("serve")
def serve_device_command(
    protocol: Annotated[str, typer.Option(help="'opcua' or 'mqtt'.")] = "opcua",
    mapping: Annotated[
        Path | None,
        typer.Option(help="Device mapping file (TOML).  (default: the E. coli reactor's)"),
    ] = None,
    port: Annotated[
        int, typer.Option(help="TCP port on 127.0.0.1 (OPC UA server or the broker).")
    ] = 4840,
    folder: Annotated[
        Path, typer.Option(help="Where certificates, passwords and controller.toml go.")
    ] = Path("device"),
    speed_up: Annotated[
        str, typer.Option("--speed-up", help="Process s per wall s of the device's clock.")
    ] = "60",
    seed: Annotated[int, typer.Option(help="Random seed of the simulated plant.")] = 1,
) -> None:
    """Serve the simulated reactor on 127.0.0.1 until Ctrl-C; print how to drive it."""
    from bpcontrol.clock import PacedClock
    from bpcontrol.runspec import resolve, spec_for
    from hil.runner import pack_scenario, simulated_plant
    from services.edge.mapping import load_mapping

    with user_errors():
        if protocol not in ("opcua", "mqtt"):
            raise ValueError(f"--protocol must be opcua or mqtt, got {protocol!r}")
        if not 0 < port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {port}")
        speed = parse_speed_up(speed_up)
        if speed == float("inf"):
            raise ValueError("--speed-up must be a number for a device (its clock is paced)")
        map_path = mapping or _example_mapping()
        dev_map = load_mapping(map_path)
        if protocol == "mqtt" and dev_map.mqtt is None:
            raise ValueError(f"{map_path}: no [mqtt] table (prefix, site, reactor)")
        run = resolve(spec_for(dev_map.model))
        plant = simulated_plant(run, pack_scenario(run), seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        clock = PacedClock(speed)
        security = folder.resolve() / "controller.toml"
        if protocol == "opcua":
            device, endpoint = _opcua_device(plant, clock, dev_map, port, folder, security)
            url = f"opcua://127.0.0.1:{port}"
        else:
            device, endpoint = _mqtt_device(plant, clock, dev_map, port, folder, security)
            url = f"mqtt://127.0.0.1:{port}"
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        typer.echo(f"device {dev_map.name} ({dev_map.model}) serving {endpoint}")
        typer.echo(f"controller login: {security}")
        typer.echo(
            f"drive it: bpcontrol run --plant {url} --device-mapping {map_path.resolve()} "
            f"--device-security {security} --speed-up {speed_up}"
        )
        typer.echo("Ctrl-C stops the device.", err=True)
        while not stop.wait(0.2):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        device.stop()
    applied = sum(1 for e in device.write_log if e.command_id != 0)
    typer.echo(f"device stopped ({applied} setpoint writes applied)")


@device_app.command("mapping")
def mapping_command(
    model: Annotated[str, typer.Option(help="Built-in model name or a .py model file.")],
    name: Annotated[str, typer.Option(help="The device's browse name (node ids, topics).")] = "r1",
    safe: Annotated[
        list[str] | None,
        typer.Option(
            help="A safe setpoint NAME=VALUE in model units (repeatable; default: the "
            "input's nominal value)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the file here (default: print it).")
    ] = None,
) -> None:
    """Print the identity device mapping of a model (every input and measured output under
    its own name, in model units) as a TOML file to edit for a real device."""
    from models import load_model
    from services.edge.mapping import identity_toml

    with user_errors():
        m = load_model(model)
        values = {u.name: u.nominal for u in m.inputs}
        for item in safe or []:
            key, sep, text = item.partition("=")
            if not sep or key.strip() not in values:
                raise ValueError(
                    f"--safe {item!r}: use NAME=VALUE with NAME one of {', '.join(values)}"
                )
            try:
                values[key.strip()] = float(text)
            except ValueError:
                raise ValueError(f"--safe {item!r}: {text!r} is not a number") from None
        text = identity_toml(m, values, name=name)
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
            typer.echo(f"wrote {output} (device mapping of model {m.name})")


def _opcua_device(
    plant: Any, clock: Any, mapping: Any, port: int, folder: Path, security: Path
) -> tuple[Any, str]:
    """The OPC UA device server with fresh certificates and a controller login."""
    from hil.device_server import DeviceSecurity, DeviceServer
    from services.edge.credentials import write_credentials
    from services.edge.pki import make_certificate

    pki = folder.resolve() / "pki"
    dev = make_certificate(pki, "device", f"urn:bpcontrol:device:{mapping.name}", server=True)
    ctl = make_certificate(pki, "controller", "urn:bpcontrol:controller", server=False)
    trusted = pki / "trusted"
    trusted.mkdir(exist_ok=True)
    for old in trusted.glob("*.der"):
        old.unlink()
    (trusted / "controller.der").write_bytes(ctl.cert.read_bytes())
    password = secrets.token_urlsafe(12)
    write_credentials(
        security,
        {
            "opcua": {
                "cert": str(ctl.cert),
                "key": str(ctl.key),
                "uri": ctl.uri,
                "server_cert": str(dev.cert),
                "user": "controller",
                "password": password,
            }
        },
    )
    device = DeviceServer(
        plant,
        clock,
        mapping,
        security=DeviceSecurity(dev.cert, dev.key, dev.uri, trusted, {"controller": password}),
        port=port,
        start_on_first_command=True,
    )
    try:
        device.start()
    except RuntimeError as exc:
        raise ValueError(f"--port {port}: the device server could not start ({exc})") from None
    return device, f"{device.endpoint} (Basic256Sha256 SignAndEncrypt, user login)"


def _mqtt_device(
    plant: Any, clock: Any, mapping: Any, port: int, folder: Path, security: Path
) -> tuple[Any, str]:
    """A local Mosquitto (logins, ACL) and the MQTT device on it."""
    from hil.device_mqtt import DeviceMqtt
    from services.edge.broker import reactor_logins, start_mosquitto
    from services.edge.credentials import write_credentials
    from services.edge.mqtt_gateway import MqttSecurity

    logins = reactor_logins(mapping.mqtt, mapping.name)
    users, ctl_user, dev_user = logins.users, logins.controller, logins.device
    try:
        broker = start_mosquitto(folder.resolve() / "mosquitto", users, logins.acl, port=port)
    except RuntimeError as exc:
        raise ValueError(f"--port {port}: the broker could not start ({exc})") from None
    write_credentials(security, {"mqtt": {"user": ctl_user, "password": users[ctl_user]}})
    device = DeviceMqtt(
        plant,
        clock,
        mapping,
        host="127.0.0.1",
        port=broker.port,
        security=MqttSecurity(dev_user, users[dev_user]),
        start_on_first_command=True,
    )
    try:
        device.start()
    except RuntimeError:
        broker.stop()
        raise

    class _Both:
        """Stops the device, then its broker."""

        write_log = device.write_log

        def stop(self) -> None:
            device.stop()
            broker.stop()

    return _Both(), f"mqtt://127.0.0.1:{broker.port} (topics {mapping.mqtt.base}/..., login, ACL)"
