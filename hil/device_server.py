"""A simulated bioreactor controller on the network: an asyncua server over a plant.

:class:`DeviceServer` exposes the LADS-shaped profile (:mod:`services.edge.profile`) of a
mapping file for any plant (the simulated E. coli reactor by default), advanced on a
clock: whenever one of the plant's sampling instants (``period_h``) has passed (a plant
without one: every ``poll_s`` of wall time) it reads the plant at ``clock.now()`` and
publishes each sensor's latest value with its sample time (process h), then its process
time (refreshed every 10 ms of wall time in between); a write of the TargetValues
together with a new SetpointCommandId (one write request) is applied to the plant at
``clock.now()``, clipped to the device range, and confirmed through the CurrentValues and
ConfirmedCommandId. Every applied write is kept in :attr:`DeviceServer.write_log`.

Fail-safe: once the controller's heartbeat was seen, a gap longer than the mapping's
``heartbeat_timeout_s`` drops the device to the mapping's safe setpoints, sets the unit's
State to ``SafeState`` and LinkOk false (:attr:`safe_events` says when); the next beat
sets LinkOk again, and the controller's next command leaves the safe state.

With ``start_on_first_command`` the device neither samples nor advances the plant until
the controller's first command, and restarts its clock (``restart()``, when it has one)
then: process time 0 is the controller's first setpoint, as for the in-process plant.

On a :class:`bpcontrol.clock.SteppedClock` the device is in lockstep with its controller:
it samples only when :meth:`DeviceServer.step_to` moves its clock (the HIL layer does that
before each of the loop's reads, :mod:`hil.transport`), so it sees every sampling instant
whatever the speed and however long a solve takes.

It is the device side of the HIL rigs: ``DeviceServer(plant, clock, mapping)``, ``start()``
(a free 127.0.0.1 port unless one is given) and ``stop()``; stop and start again on the
same port to simulate a device outage (the plant keeps its state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager

from bpcontrol.clock import SteppedClock
from bpcontrol.interfaces import Clock, Plant
from services.edge.link import HeartbeatWatch, free_port
from services.edge.mapping import DeviceMapping
from services.edge.profile import DeviceNodes, build_device

__all__ = ["DeviceSecurity", "DeviceServer", "WriteEntry", "held_now", "sampling_period"]

_log = logging.getLogger(__name__)

_RECHECK_S = 0.05
"""Wall s between reads of the heartbeat and command nodes when no write woke the device."""
_TIME_PUBLISH_S = 0.01
"""Wall s between refreshes of the process time while no sampling instant passes."""


def sampling_period(plant: Plant) -> float | None:
    """The plant's sampling period (h) when it declares one (``period_h``): its readings
    exist only at multiples of it, so the device reads it only when one has passed."""
    period = getattr(plant, "period_h", None)
    if isinstance(period, (int, float)) and math.isfinite(period) and period > 0:
        return float(period)
    return None


@dataclass(frozen=True)
class DeviceSecurity:
    """The device's security: its certificate and key, the folder of trusted client
    certificates (DER), the users ``{name: password}``; ``allow_none`` also offers the
    unsecured policy None (for a lab bench only; a warning is logged)."""

    cert: Path
    key: Path
    uri: str
    trusted_clients: Path
    users: Mapping[str, str]
    allow_none: bool = False


@dataclass(frozen=True)
class WriteEntry:
    """One setpoint set the device applied: wall time (s, monotonic), process time (h),
    the command id (0: the device's own safe fallback), the values held (model units)."""

    wall_s: float
    t_h: float
    command_id: int
    held: dict[str, float]


def held_now(plant: Plant, write_log: list[WriteEntry], mapping: DeviceMapping) -> dict[str, float]:
    """What a device's plant holds now (model units): its last write, else the plant's
    inputs at the start, else the mapping's safe setpoints (both device sides use it)."""
    if write_log:
        return dict(write_log[-1].held)
    truth = getattr(plant, "truth", None)
    if callable(truth):
        u = truth().u
        if len(u):
            return {n: float(v) for n, v in zip(plant.input_names, u[-1], strict=True)}
    return mapping.safe_setpoints()


class _Users(UserManager):
    """Users with a password; anyone else (anonymous, wrong password) is refused."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self._users.get(username) == password and password is not None:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class _State:
    last_command: int = 0
    safe: bool = False
    samples: dict[str, tuple[float, float]] = field(default_factory=dict)


class DeviceServer:
    """The simulated device (module docstring). ``plant`` in model units, ``clock`` in h."""

    def __init__(
        self,
        plant: Plant,
        clock: Clock,
        mapping: DeviceMapping,
        *,
        security: DeviceSecurity | None,
        port: int = 0,
        poll_s: float = 0.002,
        start_on_first_command: bool = False,
    ) -> None:
        self.plant, self.clock, self.mapping = plant, clock, mapping
        self.start_on_first_command = start_on_first_command
        self._running_batch = not start_on_first_command
        self.security = security
        self.port = port or free_port()
        self.poll_s = poll_s
        self.write_log: list[WriteEntry] = []
        self.safe_events: list[tuple[float, float]] = []
        """(wall s when the device dropped to safe, seconds since the last heartbeat)."""
        self._state = _State()
        self._next_instant_h = -math.inf  # the plant's next sampling instant (h)
        self._watch = HeartbeatWatch(mapping.heartbeat_timeout_s)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._stepped = isinstance(clock, SteppedClock)
        self._nodes: DeviceNodes | None = None
        self._period_h = sampling_period(plant)

    @property
    def endpoint(self) -> str:
        """``opc.tcp://127.0.0.1:<port>/bpcontrol/``."""
        return f"opc.tcp://127.0.0.1:{self.port}/bpcontrol/"

    @property
    def safe(self) -> bool:
        """True while the device holds its safe setpoints after a lost heartbeat."""
        return self._state.safe

    def start(self, timeout_s: float = 15.0) -> None:
        """Start serving (returns once the server listens; raises when it cannot)."""
        if self._thread is not None:
            raise RuntimeError("device server already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, name=f"device-{self.mapping.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"device server did not start within {timeout_s:g} s")
        if self._error is not None:
            self._thread.join(5.0)
            self._thread = None
            raise RuntimeError(f"device server failed to start: {self._error}") from self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (idempotent); the plant keeps its state for a later :meth:`start`."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        self._thread = None

    def step_to(self, t_h: float, timeout_s: float = 10.0) -> None:
        """Lockstep: move the device's stepped clock to ``t_h`` (h), read the plant if one of
        its sampling instants has passed, and return once its values and then its process
        time are published (a stopped device only moves its clock: its plant runs on).
        Raises RuntimeError on a device with a paced clock or one that does not answer."""
        clock = self.clock
        if not isinstance(clock, SteppedClock):
            raise RuntimeError("step_to needs a device on a SteppedClock (lockstep)")
        clock.step_to(t_h)
        loop, nodes = self._loop, self._nodes
        if self._thread is None or loop is None or nodes is None or not self._running_batch:
            return
        future = asyncio.run_coroutine_threadsafe(self._publish_step(nodes), loop)
        try:
            future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise RuntimeError(
                f"device {self.mapping.name}: step to {t_h:.4f} h not published within "
                f"{timeout_s:g} s"
            ) from None

    async def _publish_step(self, nodes: DeviceNodes) -> None:
        await self._sample_if_due(nodes, self._period_h, time.monotonic(), -math.inf)

    def __enter__(self) -> DeviceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the server thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start(), or logged after it
            self._error = exc
            _log.exception("device server %s stopped", self.mapping.name)
        finally:
            self._ready.set()

    async def _make_server(self) -> tuple[Server, DeviceNodes]:
        sec = self.security
        server = Server(user_manager=_Users(sec.users) if sec is not None else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"bpcontrol simulated bioreactor {self.mapping.name}")
        if sec is None:
            _log.warning(
                "device %s: security policy None (no encryption, no users)", self.mapping.name
            )
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.set_application_uri(sec.uri)
            await server.load_certificate(str(sec.cert))
            await server.load_private_key(str(sec.key))
            policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
            if sec.allow_none:
                _log.warning(
                    "device %s: policy None allowed besides SignAndEncrypt", self.mapping.name
                )
                policies.append(ua.SecurityPolicyType.NoSecurity)
            server.set_security_policy(policies)
            server.set_identity_tokens([ua.UserNameIdentityToken])
            trust = TrustStore([sec.trusted_clients], [])
            await trust.load()
            server.set_certificate_validator(
                CertificateValidator(
                    CertificateValidatorOptions.TRUSTED_VALIDATION
                    | CertificateValidatorOptions.PEER_CLIENT,
                    trust,
                )
            )
        idx = await server.register_namespace(self.mapping.namespace)
        if idx != 2:
            raise RuntimeError(f"device namespace got index {idx}, the mapping's node ids need 2")
        nodes = await build_device(server, self.mapping, idx)
        return server, nodes

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        written = asyncio.Event()
        server, nodes = await self._make_server()

        command_node = nodes.command_id.nodeid
        applying = asyncio.Lock()  # the callback and the poll never apply one command twice

        async def on_write(event: Any, dispatcher: Any) -> None:
            # a command is applied before the write is answered: its confirmation is there
            # at the controller's first read (asyncua awaits PostWrite before responding)
            if any(w.NodeId == command_node for w in event.request_params.NodesToWrite):
                async with applying:
                    await self._apply_command(nodes)
            written.set()

        server.subscribe_server_callback(CallbackType.PostWrite, on_write)
        period_h = self._period_h
        async with server:
            self._nodes = nodes
            await self._publish_held(nodes, held_now(self.plant, self.write_log, self.mapping))
            self._ready.set()
            last_beat: int | None = None
            checked = published = -math.inf  # wall s of the last node check and time publish
            while not self._stop.is_set():
                woke = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(written.wait(), self.poll_s)
                    woke = True
                written.clear()
                now = time.monotonic()
                # the heartbeat and a command arrive as writes (they wake the loop); read
                # the nodes again now and then in case a write's callback was missed
                if woke or now - checked >= _RECHECK_S:
                    checked = now
                    beat = int(await nodes.heartbeat.read_value())
                    if beat != last_beat and (last_beat is not None or beat != 0):
                        self._watch.beat(now)
                        if not await nodes.link_ok.read_value():
                            await nodes.link_ok.write_value(True)
                    last_beat = beat
                    async with applying:
                        await self._apply_command(nodes)
                if self._watch.lost(now) and not self._state.safe:
                    await self._go_safe(nodes, now)
                if self._running_batch and not self._stepped:  # stepped: step_to samples
                    published = await self._sample_if_due(nodes, period_h, now, published)
            self._nodes = None

    async def _sample_if_due(
        self, nodes: DeviceNodes, period_h: float | None, now: float, published: float
    ) -> float:
        """Sample the plant when one of its sampling instants has passed since the last
        sample (every poll for a plant without ``period_h``), else only refresh the
        process time every ``_TIME_PUBLISH_S``; returns the wall time it last published.
        Reading the plant and writing every node at each 2 ms poll held the GIL most of
        the time and starved a controller in the same process (ticks 2-6 s late at 600x)."""
        t = self.clock.now()
        if period_h is None or t >= self._next_instant_h - 1e-9:
            await self._sample(nodes)
            if period_h is not None:
                self._next_instant_h = (math.floor(t / period_h + 1e-9) + 1) * period_h
            return now
        if now - published >= _TIME_PUBLISH_S:  # no instant passed: no new sample exists
            await nodes.process_time.write_value(t, ua.VariantType.Double)
            return now
        return published

    async def _publish_held(self, nodes: DeviceNodes, held: Mapping[str, float]) -> None:
        for m in self.mapping.inputs:
            value = m.to_device(float(held[m.name]))
            await nodes.currents[m.name].write_value(value, ua.VariantType.Double)

    async def _apply(
        self, nodes: DeviceNodes, setpoints: Mapping[str, float], command_id: int
    ) -> None:
        t = self.clock.now()
        held = self.plant.apply(t, setpoints)
        entry = WriteEntry(time.monotonic(), t, command_id, {k: float(v) for k, v in held.items()})
        with self._lock:
            self.write_log.append(entry)
        await self._publish_held(nodes, held)
        await nodes.writes.write_value(len(self.write_log), ua.VariantType.UInt32)

    async def _apply_command(self, nodes: DeviceNodes) -> None:
        cid = int(await nodes.command_id.read_value())
        if cid == self._state.last_command:
            return
        setpoints = {}
        for m in self.mapping.inputs:
            device = float(await nodes.targets[m.name].read_value())
            setpoints[m.name] = m.to_model(min(max(device, m.lower), m.upper))
        self._state.last_command = cid
        if not self._running_batch:  # the batch starts with the controller's first command
            restart = getattr(self.clock, "restart", None)
            if callable(restart):
                restart()
            self._running_batch = True
        if self._state.safe:
            self._state.safe = False
            await nodes.state.write_value("Running")
        await self._apply(nodes, setpoints, cid)
        await nodes.confirmed_id.write_value(cid, ua.VariantType.UInt64)

    async def _go_safe(self, nodes: DeviceNodes, now: float) -> None:
        await self._apply(nodes, self.mapping.safe_setpoints(), 0)
        await nodes.state.write_value("SafeState")
        await nodes.link_ok.write_value(False)
        self.safe_events.append((time.monotonic(), self._watch.silent_s(now)))
        self._state.safe = True  # last: whoever sees it sees the log and events too
        _log.warning("device %s: heartbeat lost, safe setpoints applied", self.mapping.name)

    async def _sample(self, nodes: DeviceNodes) -> None:
        t = self.clock.now()
        readings = self.plant.read(t)
        latest: dict[str, tuple[float, float]] = {}
        for r in readings:
            ts = t if r.t_sample is None else float(r.t_sample)
            latest[r.sensor] = (float(r.value), ts)
        for o in self.mapping.outputs:
            if o.name in latest:
                value, ts = latest[o.name]
                device = o.to_device(value)
                await nodes.values[o.name].write_value(device, ua.VariantType.Double)
                await nodes.raws[o.name].write_value(device, ua.VariantType.Double)
                await nodes.sample_times[o.name].write_value(ts, ua.VariantType.Double)
        # last: a controller that sees the process time at its tick sees the tick's samples
        await nodes.process_time.write_value(t, ua.VariantType.Double)
