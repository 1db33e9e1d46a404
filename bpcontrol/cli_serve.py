"""``bpcontrol serve``: run loops (one per reactor) and the live API in one process.

Part of the composition root (it may import ``hil`` and ``services``). Each reactor is a
run spec (``--spec FILE``) or a pack (``--pack NAME_OR_DIR``, repeated or ``--reactors N``
copies, named R1, R2, ...); its loop runs in its own thread on a paced clock, writing to an
embedded historian (``<out>/<reactor>/records.sqlite``) through the API's record tee
(:class:`services.api.reactors.RecordTee`). The API (uvicorn) serves on the main thread;
Ctrl-C or SIGTERM stops the server, then the loops at their next tick, closes the
historians (and the device gateways) and prints the audit file's head (``SEQ:HASH``, for
``bpcontrol audit verify --head``).

Each reactor's plant is the pack's simulator, unless ``--devices FILE`` names the reactor:
then its loop drives that device through the edge gateway (OPC UA or MQTT), built by the
same code as ``bpcontrol run --plant`` (:func:`bpcontrol.cli_run.device_plant`). The file
has one table per reactor::

    [R1]
    plant = "opcua://127.0.0.1:4840/bpcontrol/"   # or mqtt://HOST:PORT
    mapping = "ecoli_reactor.toml"                # the device mapping (docs/device-mapping.md)
    security = "device/controller.toml"           # the controller's login

(relative paths from the file's folder). A device is paced by its own clock: ``--speed-up``
must be the device's speed.

Without ``--config`` it runs in demo mode, and says so: a random token secret and one user
per role with a random password printed once, loopback only. With ``--config`` the
settings file must name a secret and users (:mod:`services.api.settings`); there are no
default credentials.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bpcontrol.cli_common import check_output_folder, fail, parse_speed_up, user_errors

if TYPE_CHECKING:
    import uvicorn

    from bpcontrol.clock import PacedClock
    from bpcontrol.loop import RunSummary
    from bpcontrol.runspec import RunSpec
    from services.api.reactors import ReactorHandle

__all__ = ["DevicePlant", "Served", "build_served", "load_devices", "serve_command", "specs_for"]


@dataclass(frozen=True)
class DevicePlant:
    """Where one reactor's device is (a table of the ``--devices`` file).

    Attributes:
        url: the gateway URL, ``opcua://HOST:PORT[/PATH]`` or ``mqtt://HOST:PORT``.
        mapping: the device's mapping file (TOML).
        security: the controller's login file (``bpcontrol device serve`` writes one).
        where: the file and table it came from, for messages (``devices.toml [R1]``).
    """

    url: str
    mapping: Path
    security: Path
    where: str = ""


_DEVICE_KEYS = ("plant", "mapping", "security")


def load_devices(path: Path, reactors: list[str]) -> dict[str, DevicePlant]:
    """The ``--devices`` file: one :class:`DevicePlant` per reactor it names.

    Raises:
        ValueError: an unreadable file, a table for a reactor that is not served, a missing,
            unknown or empty key, or a file the table names that does not exist (one line
            naming the file and key).
    """
    from bpcontrol.cli_run import check_plant_url
    from bpcontrol.tomlfile import read_toml

    doc = read_toml(path, "devices file", ValueError)
    out: dict[str, DevicePlant] = {}
    for reactor, table in doc.items():
        if reactor not in reactors:
            raise ValueError(f"{path}: [{reactor}]: no such reactor; reactors are {reactors}")
        if not isinstance(table, dict):
            raise ValueError(f"{path}: {reactor}: must be a table with {list(_DEVICE_KEYS)}")
        unknown = sorted(set(table) - set(_DEVICE_KEYS))
        if unknown:
            raise ValueError(f"{path}: {reactor}.{unknown[0]}: unknown key; use {_DEVICE_KEYS}")
        values: dict[str, str] = {}
        for key in _DEVICE_KEYS:
            value = table.get(key)
            if not (isinstance(value, str) and value.strip()):
                raise ValueError(f"{path}: {reactor}.{key}: must be a non-empty string")
            values[key] = value
        check_plant_url(values["plant"], f"{path} [{reactor}].plant")
        files = {}
        for key in ("mapping", "security"):
            where = path.parent / values[key]
            if not where.is_file():
                raise ValueError(f"{path}: {reactor}.{key}: no such file {where}")
            files[key] = where
        out[reactor] = DevicePlant(
            values["plant"], files["mapping"], files["security"], f"{path} [{reactor}]"
        )
    return out


@dataclass
class Served:
    """One reactor's running loop: its API handle, clock and thread."""

    handle: ReactorHandle
    clock: PacedClock
    duration_h: float | None = None
    plant_label: str = "simulated plant"
    summary: RunSummary | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the loop's clock and thread."""
        self.thread = threading.Thread(target=self._run, name=f"loop-{self.handle.id}")
        self.thread.daemon = True
        self.clock.restart()
        self.thread.start()

    def _run(self) -> None:
        try:
            self.summary = self.handle.loop.run(self.duration_h)
        except BaseException as exc:  # reported by stop(); the API keeps serving the rest
            self.error = exc

    def stop(self, reason: str, timeout_s: float = 30.0) -> None:
        """Stop the loop at its next tick, wait for it, close the historian (ends streams)
        and the plant when it has a ``close`` (a device gateway)."""
        self.handle.loop.request_stop(reason)
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.handle.tee.close()
        close = getattr(self.handle.loop.plant, "close", None)
        if callable(close):
            close()


def build_served(
    spec: RunSpec,
    *,
    folder: Path,
    speed_up: float,
    duration_h: float | None = None,
    device: DevicePlant | None = None,
) -> Served:
    """Build one reactor's loop (not started), its historian in ``folder``: on the pack's
    simulated plant, or on ``device`` through its edge gateway (connected here; raises
    :class:`bpcontrol.interfaces.PlantError` when the device cannot be reached, ValueError
    for a bad URL, mapping or login)."""
    from bpcontrol.assembly import build_loop
    from bpcontrol.cli_run import device_plant
    from bpcontrol.clock import PacedClock
    from bpcontrol.interfaces import Plant
    from bpcontrol.runspec import resolve
    from hil.runner import pack_scenario, simulated_plant
    from services.api.reactors import ReactorHandle, RecordTee
    from services.historian import EmbeddedHistorian

    run = resolve(spec)
    plant: Plant
    if device is None:
        plant = simulated_plant(run, pack_scenario(run), seed=spec.seed)
        label = "simulated plant"
    else:
        option = f"{device.where}.plant" if device.where else "plant"
        plant = device_plant(device.url, device.mapping, device.security, run.model, option=option)
        label = f"device {device.url} (mapping {device.mapping})"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.toml").write_text(spec.to_toml(), encoding="utf-8")
    path = folder / "records.sqlite"
    tee = RecordTee(EmbeddedHistorian(path))
    clock = PacedClock(speed_up)
    assembled = build_loop(run, plant=plant, historian=tee, clock=clock)
    handle = ReactorHandle(
        id=spec.identity.reactor,
        loop=assembled.loop,
        tee=tee,
        records_path=path,
        state_names=tuple(run.model.state_names),
    )
    return Served(handle, clock, duration_h, label)


def specs_for(
    packs: list[str], spec_files: list[Path], reactors: int, *, controller: str | None, seed: int
) -> list[RunSpec]:
    """The run specs to serve: one per spec file and pack, or ``reactors`` copies of one
    pack (default: the E. coli pack), named R1, R2, ... unless a spec names its reactor."""
    from bpcontrol.records import RunIdentity
    from bpcontrol.runspec import load_run_spec, spec_for

    specs = [load_run_spec(p) for p in spec_files]
    names = packs or ([] if specs else ["ecoli_fedbatch"])
    if reactors < 1:
        raise ValueError(f"--reactors must be >= 1, got {reactors}")
    if reactors > 1 and len(names) > 1:
        raise ValueError("--reactors N copies one pack; give one --pack with it")
    copies = names * reactors if len(names) == 1 and not specs else names
    for k, name in enumerate(copies, start=len(specs) + 1):
        identity = RunIdentity.start(site="demo", reactor=f"R{k}", batch_id=f"B{k}")
        specs.append(spec_for(name, identity=identity, seed=seed + k))
    if controller is not None:
        if controller not in ("nmpc", "recipe"):
            raise ValueError(f"--controller must be nmpc or recipe, got {controller!r}")
        specs = [replace(s, controller=controller) for s in specs]  # type: ignore[arg-type]
    specs = [s if s.pack.control is not None else replace(s, controller="recipe") for s in specs]
    ids = [s.identity.reactor for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two run specs name the same reactor: {ids}")
    return specs


def _build_all(
    specs: list[RunSpec],
    root: Path,
    pace: float,
    duration_h: float | None,
    on_device: dict[str, DevicePlant],
) -> list[Served]:
    """Every reactor's loop (not started); a device that cannot be reached exits 1, after
    closing the gateways already connected."""
    from bpcontrol.interfaces import PlantError

    served: list[Served] = []
    try:
        for s in specs:
            rid = s.identity.reactor
            served.append(
                build_served(
                    s,
                    folder=root / rid,
                    speed_up=pace,
                    duration_h=duration_h,
                    device=on_device.get(rid),
                )
            )
    except BaseException as exc:
        for done in served:
            close = getattr(done.handle.loop.plant, "close", None)
            if callable(close):
                close()
            done.handle.tee.close()
        if isinstance(exc, PlantError):
            fail(exc, 1)
        raise
    return served


def _server_class(base: type[uvicorn.Server]) -> type[uvicorn.Server]:
    """uvicorn's server, but a SIGINT or SIGTERM only stops it (uvicorn re-raises the
    signal after shutting down, which would kill the process before the loops stop)."""

    class Server(base):  # type: ignore[valid-type, misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return Server


def _write_summary(path: Path, served: list[Served]) -> None:
    """Each reactor's ticks, end time, records and tick lateness (ms of wall time)."""
    doc = {}
    for s in served:
        got = s.summary or s.handle.loop.summary
        doc[s.handle.id] = {
            "ticks": got.ticks,
            "t_end_h": got.t_end_h,
            "records": got.records,
            "stopped": got.stopped,
            "lateness_ms": [round(v * 1e3, 4) for v in got.lateness_s],
            **got.jitter(),
        }
    path.write_text(json.dumps(doc) + "\n", encoding="utf-8")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    pack: Annotated[
        list[str] | None, typer.Option(help="Pack folder or built-in name (repeatable).")
    ] = None,
    spec: Annotated[
        list[Path] | None, typer.Option(help="Run spec file, one reactor each (repeatable).")
    ] = None,
    reactors: Annotated[int, typer.Option(help="Copies of the one pack (R1..RN).")] = 1,
    config: Annotated[
        Path | None, typer.Option(help="API settings (secret, users); omit for demo mode.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one, printed).")] = 8000,
    speed_up: Annotated[
        str, typer.Option(help="Process seconds per wall second (1 = live).")
    ] = "60",
    controller: Annotated[
        str | None, typer.Option(help="nmpc or recipe (default: the pack's).")
    ] = None,
    duration_h: Annotated[
        float | None, typer.Option(help="Hours to run (default: the batch).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for records and audit.")] = None,
    seed: Annotated[int, typer.Option(help="Plant seed (reactor k gets seed + k).")] = 1,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    summary: Annotated[
        Path | None, typer.Option(help="Write each loop's summary (ticks, lateness) as JSON.")
    ] = None,
    hash_password: Annotated[
        bool, typer.Option(help="Read a password on stdin, print its argon2 hash, exit.")
    ] = False,
    devices: Annotated[
        Path | None,
        typer.Option(
            help="TOML naming, per reactor, a device to drive through the edge gateway "
            "(plant URL, mapping, security); other reactors run on simulated plants."
        ),
    ] = None,
) -> None:
    """Run loops and the live API; demo mode (random credentials) without --config."""
    if hash_password:
        from services.api.auth import hash_password as make_hash

        text = sys.stdin.readline().rstrip("\n")
        if not text:
            fail(ValueError("no password on stdin"), 2)
        typer.echo(make_hash(text))
        return
    import uvicorn

    from services.api.app import create_app
    from services.api.audit import AuditChain
    from services.api.settings import demo_settings, load_settings

    tls = tls_cert is not None or tls_key is not None
    with user_errors():
        if tls and (tls_cert is None or tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key")
        if not 0 <= port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {port}")
        pace = parse_speed_up(speed_up)
        if math.isinf(pace):
            raise ValueError("--speed-up max would end the batches at once; give a number")
        settings = load_settings(config, tls=tls) if config else demo_settings(tls=tls)
        if settings.demo and not _loopback(host):
            raise ValueError(f"demo mode serves loopback only; --host {host} needs --config")
        root = out or Path("runs") / f"serve-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        check_output_folder(root, "--out")
        specs = specs_for(pack or [], spec or [], reactors, controller=controller, seed=seed)
        ids = [s.identity.reactor for s in specs]
        on_device = load_devices(devices, ids) if devices is not None else {}
        audit = AuditChain(root / "audit.jsonl")
        served = _build_all(specs, root, pace, duration_h, on_device)
    app = create_app(settings=settings, reactors=[s.handle for s in served], audit=audit)
    # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on every connection (with proto 0 it
    # does not, and Nagle's algorithm with delayed ACKs adds 40 ms to each response)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from now on, before uvicorn takes over
    except OSError as exc:
        fail(ValueError(f"--host/--port: cannot listen on {host}:{port} ({exc})"), 2)
    scheme = "https" if tls else "http"
    bound = sock.getsockname()[1]
    if settings.demo:
        plants = "simulated plants" if not on_device else "plants as listed"
        typer.echo(f"DEMO MODE: {plants}, random credentials (shown once), loopback only")
        for name, password in settings.demo_passwords.items():
            typer.echo(f"  user {name:9s} password {password}")
    for s in served:
        typer.echo(f"  reactor {s.handle.id}: {s.plant_label}")
    typer.echo(f"reactors: {', '.join(s.handle.id for s in served)}; records in {root}")
    typer.echo(f"serving on {scheme}://{host}:{bound}/api/v1 (audit file {audit.path})")
    sys.stdout.flush()
    for s in served:
        s.start()
    server = _server_class(uvicorn.Server)(
        uvicorn.Config(
            app,
            log_level="warning",
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            access_log=False,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        for s in served:
            s.stop("the server stopped")
        for s in served:
            if s.error is not None:
                typer.echo(f"error: reactor {s.handle.id}: {s.error}", err=True)
        if summary is not None:
            _write_summary(summary, served)
        typer.echo(f"audit head {audit.head} ({audit.path})")
