"""The OPC UA gateway: the loop's Plant port over asyncua to a LADS-shaped device.

:class:`OpcUaPlant` keeps one session to the device (its own event loop thread), writes
the controller's heartbeat every ``heartbeat_period_s`` and reconnects with exponential
backoff when the session drops; a session counts as connected once the device's LinkOk
says it saw the first beat (a fresh or safe device reports LinkOk false until then), and
the beat counter starts from the wall clock in ms, so a restarted gateway's first beat
differs from the last one the device saw. ``read`` reads every mapped SensorValue and
SampleTime in one request and returns the samples newer than those already returned
(model units, sample times in the loop's process time). ``apply`` refuses values outside
the device's declared ranges before anything is sent, writes the TargetValues with their
declared type (Double) and a new SetpointCommandId in one request, and waits
(``confirm_timeout_s``) until the device's ConfirmedCommandId says it applied them; it
returns the CurrentValues, what the device really holds. :attr:`OpcUaPlant.exchanges`
keeps every write sent and its confirmation.

Security is on by default: Basic256Sha256 SignAndEncrypt with the client's certificate
(which the device must trust), a user name and password, and the device's certificate
pinned (the session's keys come from the trusted certificate, so an impostor cannot
answer). Policy None needs ``allow_insecure=True`` and logs a warning.

A lost link (no session, or the device reporting LinkOk false: it missed the heartbeat and
holds its safe setpoints) raises :class:`bpcontrol.interfaces.PlantLinkLostError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asyncua import Client, Node, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from bpcontrol.interfaces import PlantError, PlantLinkLostError
from estimators import Reading
from services.edge.link import Backoff
from services.edge.mapping import DeviceMapping
from services.edge.setpoints import Exchange, device_setpoints, loop_time

__all__ = ["ClientSecurity", "Exchange", "OpcUaPlant"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class ClientSecurity:
    """The controller's certificate and key, its application URI, the device's certificate
    it trusts (DER), and the user it logs in as."""

    cert: Path
    key: Path
    uri: str
    server_cert: Path
    user: str
    password: str


async def secure_client(
    endpoint: str, security: ClientSecurity | None, *, timeout_s: float
) -> Client:
    """An asyncua client for ``endpoint``, not yet connected: Basic256Sha256
    SignAndEncrypt with the user, password and certificates of ``security`` (None: policy
    None, only when explicitly configured)."""
    client = Client(endpoint, timeout=timeout_s)
    if security is not None:
        client.application_uri = security.uri
        client.set_user(security.user)
        client.set_password(security.password)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(security.cert),
            str(security.key),
            server_certificate=str(security.server_cert),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    return client


class OpcUaPlant:
    """A device over OPC UA as the loop's Plant (module docstring).

    Args:
        endpoint: ``opc.tcp://host:port/path`` of the device.
        mapping: the device mapping (node ids, units, ranges, timeouts).
        security: the client's security; None only with ``allow_insecure``.
        allow_insecure: permit policy None (a warning is logged).
        connect_timeout_s: the first connection's deadline (wall s); later ones retry.
        sample_wait_s: how long ``read`` waits for the device to reach the loop's tick
            (wall s), so that the samples of the tick are not handed over a period late.
    """

    def __init__(
        self,
        endpoint: str,
        mapping: DeviceMapping,
        *,
        security: ClientSecurity | None,
        allow_insecure: bool = False,
        connect_timeout_s: float = 10.0,
        sample_wait_s: float = 0.05,
    ) -> None:
        if security is None and not allow_insecure:
            raise ValueError(
                "OPC UA security is required: give the client certificate, the device "
                "certificate and a user, or allow_insecure=True for policy None"
            )
        if security is None:
            _log.warning(
                "OPC UA gateway to %s: policy None, nothing is signed or encrypted", endpoint
            )
        self.endpoint, self.mapping, self.security = endpoint, mapping, security
        self.sample_wait_s = sample_wait_s
        self.exchanges: list[Exchange] = []
        self._client: Client | None = None
        self._connected = threading.Event()
        self._closing = False
        self._beat = int(time.time() * 1000)  # a restarted gateway's first beat is new
        self._command = int(time.time() * 1000)  # ids stay unique across gateway restarts
        self._last_sample: dict[str, float] = {}
        self._offset_h: float | None = None
        self._last_error = "not connected yet"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="opcua-gateway", daemon=True
        )
        self._thread.start()
        self._keeper = asyncio.run_coroutine_threadsafe(self._keep(), self._loop)
        if not self._connected.wait(connect_timeout_s):
            error = self._last_error
            self.close()
            raise PlantError(f"OPC UA device {endpoint}: cannot connect ({error})")

    # --- the Plant port ------------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        """The mapped inputs, in model order."""
        return tuple(m.name for m in self.mapping.inputs)

    @property
    def connected(self) -> bool:
        """True while a session to the device is up."""
        return self._connected.is_set()

    def read(self, t_h: float) -> Sequence[Reading]:
        """New samples since the last call (model units; raises PlantLinkLostError, PlantError)."""
        return self._call(self._read(t_h), 5.0)

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Write ``setpoints`` (every input, model units) and return what the device holds."""
        device = self._check(setpoints)
        return self._call(self._apply(t_h, setpoints, device), self.mapping.confirm_timeout_s + 5.0)

    def device_time_h(self) -> float:
        """The device's process time now (h): where a restarted controller's clock starts
        (``bpcontrol run --resume``). Raises PlantLinkLostError without a session."""
        return self._call(self._device_time(), 5.0)

    def close(self) -> None:
        """Stop the heartbeat and close the session (idempotent); the device then falls
        back to its safe setpoints after its heartbeat timeout."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._disconnect(), self._loop).result(5.0)
        self._keeper.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    def __enter__(self) -> OpcUaPlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ---------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        if self._closing:
            coro.close()
            raise PlantError("the OPC UA gateway is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise PlantError(
                f"OPC UA device {self.endpoint}: no answer within {timeout_s:g} s"
            ) from None

    def _check(self, setpoints: Mapping[str, float]) -> dict[str, float]:
        """Device values of ``setpoints``; refuses a missing, non-finite or out-of-range one."""
        return device_setpoints(self.mapping, setpoints)

    def _session(self) -> Client:
        client = self._client
        if client is None or not self._connected.is_set():
            raise PlantLinkLostError(
                f"no session to the OPC UA device {self.endpoint} ({self._last_error}); "
                "reconnecting"
            )
        return client

    async def _connect(self) -> None:
        client = await secure_client(self.endpoint, self.security, timeout_s=2.0)
        client.session_timeout = 30_000
        await client.connect()
        self._client = client
        self._nodes = _Nodes(client, self.mapping)

    async def _disconnect(self) -> None:
        self._connected.clear()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)

    async def _keep(self) -> None:
        """Connect, beat, reconnect with backoff: the gateway's background task."""
        backoff = Backoff()
        period = self.mapping.heartbeat_period_s
        while not self._closing:
            if self._client is None:
                try:
                    await self._connect()
                except Exception as exc:
                    self._last_error = (
                        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    )
                    await self._disconnect()
                    await asyncio.sleep(backoff.next())
                    continue
                backoff.reset()
                self._last_error = ""
            try:
                if self._connected.is_set():
                    await self._write_beat()
                else:  # the first beat of a session: connected once the device saw it
                    await self._first_beat()
                    self._connected.set()
                    _log.info("OPC UA gateway connected to %s", self.endpoint)
            except Exception as exc:
                self._last_error = f"session lost ({type(exc).__name__}: {exc})"
                _log.warning("OPC UA gateway: %s", self._last_error)
                await self._disconnect()
                continue
            await asyncio.sleep(period)

    async def _write_beat(self) -> None:
        self._beat += 1
        await self._nodes.heartbeat.write_value(
            ua.DataValue(ua.Variant(self._beat, ua.VariantType.UInt64))
        )

    async def _first_beat(self) -> None:
        """Beat once and wait (up to ``confirm_timeout_s``) until the device's LinkOk
        says it saw the beat: LinkOk is false on a device that has seen no controller yet,
        and a read in that gap would report a heartbeat lost that never happened."""
        await self._write_beat()
        start = time.monotonic()
        beaten = start
        while not await self._nodes.link_ok.read_value():
            now = time.monotonic()
            if now - beaten >= self.mapping.heartbeat_period_s:
                await self._write_beat()
                beaten = now
            if now - start > self.mapping.confirm_timeout_s:  # a read will say it is lost
                _log.warning(
                    "OPC UA device %s: LinkOk still false %g s after the first heartbeat",
                    self.endpoint,
                    self.mapping.confirm_timeout_s,
                )
                return
            await asyncio.sleep(0.005)

    async def _device_time(self) -> float:
        client = self._session()
        try:
            (value,) = await client.read_values([self._nodes.process_time])
        except Exception as exc:
            await self._lost(exc)
            raise PlantLinkLostError(
                f"reading the OPC UA device's process time failed ({type(exc).__name__}: {exc})"
            ) from None
        return float(value)

    async def _read(self, t_h: float) -> list[Reading]:
        client = self._session()
        n = self._nodes
        deadline = time.monotonic() + self.sample_wait_s
        while True:
            try:
                values = await client.read_values(
                    [n.link_ok, n.process_time, *n.values, *n.sample_times]
                )
            except Exception as exc:
                await self._lost(exc)
                raise PlantLinkLostError(
                    f"reading the OPC UA device failed ({type(exc).__name__}: {exc})"
                ) from None
            link_ok, t_dev = bool(values[0]), float(values[1])
            if not link_ok:
                raise PlantLinkLostError(
                    f"the device {self.mapping.name} reports the controller's heartbeat lost; "
                    "it holds its safe setpoints"
                )
            if self._offset_h is None:
                self._offset_h = t_dev - t_h
            # the device writes ProcessTime after its samples: once it reached the tick,
            # the samples of the tick are there (else they would come a period late)
            if t_dev >= t_h + self._offset_h - 1e-9 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.001)
        k = len(self.mapping.outputs)
        out = []
        for o, value, ts in zip(
            self.mapping.outputs, values[2 : 2 + k], values[2 + k :], strict=True
        ):
            ts = float(ts)
            if ts < 0 or ts <= self._last_sample.get(o.name, -math.inf):
                continue
            self._last_sample[o.name] = ts
            out.append(
                Reading(o.name, o.to_model(float(value)), loop_time(ts, self._offset_h, t_h))
            )
        return out

    async def _apply(
        self, t_h: float, setpoints: Mapping[str, float], device: Mapping[str, float]
    ) -> dict[str, float]:
        client = self._session()
        n = self._nodes
        self._command += 1
        cid = self._command
        nodes = [*n.targets, n.command]
        dvs = [
            ua.DataValue(ua.Variant(device[m.name], ua.VariantType.Double))
            for m in self.mapping.inputs
        ]
        dvs.append(ua.DataValue(ua.Variant(cid, ua.VariantType.UInt64)))
        sent = {k: float(v) for k, v in setpoints.items()}
        t0 = time.perf_counter()
        try:
            await client.write_values(nodes, dvs)
        except ua.UaStatusCodeError as exc:
            self.exchanges.append(Exchange(cid, t_h, sent, {}, math.nan))
            raise PlantError(f"the device refused the setpoints ({exc})") from None
        except Exception as exc:
            self.exchanges.append(Exchange(cid, t_h, sent, {}, math.nan))
            await self._lost(exc)
            raise PlantLinkLostError(
                f"writing setpoints failed ({type(exc).__name__}: {exc})"
            ) from None
        deadline = t0 + self.mapping.confirm_timeout_s
        while True:
            try:
                got = await client.read_values([n.confirmed, *n.currents])
            except Exception as exc:
                self.exchanges.append(Exchange(cid, t_h, sent, {}, math.nan))
                await self._lost(exc)
                raise PlantLinkLostError(
                    f"confirming setpoints failed ({type(exc).__name__}: {exc})"
                ) from None
            if int(got[0]) == cid:
                break
            if time.perf_counter() > deadline:
                self.exchanges.append(Exchange(cid, t_h, sent, {}, math.nan))
                raise PlantError(
                    f"the device did not confirm command {cid} within "
                    f"{self.mapping.confirm_timeout_s:g} s"
                )
            await asyncio.sleep(0.0005)
        held = {
            m.name: m.to_model(float(v)) for m, v in zip(self.mapping.inputs, got[1:], strict=True)
        }
        self.exchanges.append(Exchange(cid, t_h, sent, held, time.perf_counter() - t0))
        return held

    async def _lost(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        await self._disconnect()


class _Nodes:
    """The mapped nodes of one session."""

    def __init__(self, client: Client, m: DeviceMapping) -> None:
        node = client.get_node
        self.heartbeat: Node = node(m.heartbeat_node)
        self.link_ok: Node = node(m.link_node)
        self.process_time: Node = node(m.process_time_node)
        self.command: Node = node(m.command_node)
        self.confirmed: Node = node(m.confirmed_node)
        self.targets = [node(i.target) for i in m.inputs]
        self.currents = [node(i.current) for i in m.inputs]
        self.values = [node(o.value) for o in m.outputs]
        self.sample_times = [node(o.sample_time) for o in m.outputs]
