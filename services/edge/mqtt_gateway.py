"""The MQTT gateway: the loop's Plant port over paho-mqtt (2.x, MQTT 5) to a broker.

Topics are ``<prefix>/<site>/<reactor>/<signal>`` (:class:`services.edge.mapping.MqttTopics`,
docs/device-mapping.md). The device publishes every sample of each mapped output as
retained state (``{"v": device value, "t": sample time h, "now": device process time h}``),
then its process time on ``<base>/clock`` (the set is complete), and its link (``ok`` /
``lost``, retained). :meth:`MqttPlant.apply` refuses values outside the device's declared
ranges before anything is sent, then publishes one message per input on
``<base>/<input>/set`` at QoS 1, all with one new command id and an expiry (Unix s, so a
command queued through an outage is never applied late), and waits (``confirm_timeout_s``)
for the device's confirmation on ``<base>/confirm`` with that id, which says what the
device holds. :attr:`MqttPlant.exchanges` keeps every write sent and its confirmation.

The gateway publishes ``online`` (retained) on ``<base>/controller`` with a last will of
``lost``, and a heartbeat counter on ``<base>/heartbeat`` every ``heartbeat_period_s``;
paho reconnects by itself (1 s, doubling to 4 s). User name and password, and TLS, come
from :class:`MqttSecurity`. A lost connection, or the device reporting its link lost
(heartbeat missed, safe setpoints held), raises
:class:`bpcontrol.interfaces.PlantLinkLostError`; a command the broker refuses (ACL) is a
:class:`bpcontrol.interfaces.PlantError`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bpcontrol.interfaces import PlantError, PlantLinkLostError
from estimators import Reading
from services.edge.mapping import DeviceMapping, MqttTopics
from services.edge.setpoints import Exchange, device_setpoints, loop_time

__all__ = ["MqttPlant", "MqttSecurity", "mqtt_client"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttSecurity:
    """A broker login: user and password, and optionally TLS (the CA that signed the
    broker's certificate, and a client certificate and key when the broker asks for one)."""

    user: str
    password: str
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None


def mqtt_client(client_id: str, security: MqttSecurity | None) -> mqtt.Client:
    """A paho MQTT 5 client with the login and TLS of ``security`` (None: anonymous)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if security is not None:
        client.username_pw_set(security.user, security.password)
        if security.ca_certs is not None:
            client.tls_set(
                ca_certs=str(security.ca_certs),
                certfile=None if security.certfile is None else str(security.certfile),
                keyfile=None if security.keyfile is None else str(security.keyfile),
            )
    client.reconnect_delay_set(1, 4)
    client.on_socket_open = _no_delay
    return client


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Send each packet at once: a command is several small publishes, which Nagle's
    algorithm would hold back for the peer's delayed ACK (about 40 ms each way)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def topics_of(mapping: DeviceMapping) -> MqttTopics:
    """The mapping's ``[mqtt]`` topics (a mapping without them cannot be used over MQTT)."""
    if mapping.mqtt is None:
        raise PlantError(f"{mapping.source}: no [mqtt] table (prefix, site, reactor)")
    return mapping.mqtt


class MqttPlant:
    """A device over MQTT as the loop's Plant (module docstring).

    Args:
        host, port: the broker (``127.0.0.1`` in tests).
        mapping: the device mapping (topics, units, ranges, timeouts).
        security: the broker login (None: anonymous, which a secured broker refuses).
        connect_timeout_s: the first connection's deadline (wall s); later ones retry.
        sample_wait_s: how long ``read`` waits for the samples of its tick (wall s).
    """

    def __init__(
        self,
        host: str,
        port: int,
        mapping: DeviceMapping,
        *,
        security: MqttSecurity | None,
        connect_timeout_s: float = 10.0,
        sample_wait_s: float = 0.05,
    ) -> None:
        self.host, self.port, self.mapping = host, port, mapping
        self.topics = topics_of(mapping)
        self.exchanges: list[Exchange] = []
        self._cond = threading.Condition()
        self._connected = False
        self._refused_connect: str | None = None
        self._last_error = "not connected yet"
        self._link = "ok"
        self._samples: list[tuple[str, float, float]] = []  # name, device value, t (h)
        self._device_now_h = -math.inf
        self._last_sample: dict[str, float] = {}
        self._confirms: dict[int, dict[str, Any]] = {}
        self._refused: dict[int, str] = {}  # message id -> why the broker refused it
        self._offset_h: float | None = None
        self._command = int(time.time() * 1000)  # ids stay unique across gateway restarts
        self._closing = threading.Event()
        self._by_topic = {self.topics.signal(o.name): o for o in mapping.outputs}
        self._outputs = {o.name: o for o in mapping.outputs}
        self.sample_wait_s = sample_wait_s
        client = mqtt_client(f"bpcontrol-{mapping.name}-{uuid.uuid4().hex[:8]}", security)
        client.will_set(self.topics.controller, "lost", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client
        try:
            client.connect_async(host, port, keepalive=5)
            client.loop_start()
        except Exception as exc:
            raise PlantError(f"MQTT broker {host}:{port}: cannot connect ({exc})") from None
        deadline = time.monotonic() + connect_timeout_s
        with self._cond:
            while not self._connected and self._refused_connect is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            ok, why = self._connected, self._refused_connect or self._last_error
        if not ok:
            self.close()
            raise PlantError(f"MQTT broker {host}:{port}: cannot connect ({why})")
        self._beater = threading.Thread(
            target=self._beat, name=f"mqtt-heartbeat-{mapping.name}", daemon=True
        )
        self._beater.start()

    # --- the Plant port ------------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        """The mapped inputs, in model order."""
        return tuple(m.name for m in self.mapping.inputs)

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self._connected

    def read(self, t_h: float) -> Sequence[Reading]:
        """New samples since the last call (model units; raises PlantLinkLostError).

        Once the device's clock is known (from the first confirmation), waits up to
        ``sample_wait_s`` (wall) for the device to publish its samples of ``t_h``, so that
        a sample taken at the loop's tick is not handed over one period late.
        """
        deadline = time.monotonic() + self.sample_wait_s
        with self._cond:
            self._link_check()
            if self._offset_h is not None:
                due = t_h + self._offset_h - 1e-9
                while self._device_now_h < due and self._connected:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._link == "lost":  # the samples stay for the read after the link is back
                raise PlantLinkLostError(
                    f"the device {self.mapping.name} reports the controller's heartbeat lost; "
                    "it holds its safe setpoints"
                )
            samples, self._samples = self._samples, []
        offset = self._offset_h or 0.0
        out = []
        for name, value, ts in samples:
            if ts < 0 or ts <= self._last_sample.get(name, -math.inf):
                continue  # a retained message seen again after a reconnect
            self._last_sample[name] = ts
            o = self._outputs[name]
            out.append(Reading(name, o.to_model(value), loop_time(ts, offset, t_h)))
        return out

    def device_time_h(self, timeout_s: float = 10.0) -> float:
        """The device's process time (h) of its latest clock message (it publishes one with
        each sampling instant): where a restarted controller's clock starts (``bpcontrol run
        --resume``). Raises PlantError when none arrives within ``timeout_s`` (wall)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._device_now_h == -math.inf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PlantError(
                        f"the MQTT device {self.mapping.name} published no process time within "
                        f"{timeout_s:g} s"
                    )
                self._cond.wait(left)
            return self._device_now_h

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Publish ``setpoints`` (every input, model units) and return what the device holds."""
        device = device_setpoints(self.mapping, setpoints)
        with self._cond:
            self._link_check()
        self._command += 1
        cid = self._command
        timeout = self.mapping.confirm_timeout_s
        expires = time.time() + timeout
        sent = {k: float(v) for k, v in setpoints.items()}
        t0 = time.perf_counter()
        mids = []
        for m in self.mapping.inputs:
            payload = json.dumps({"id": cid, "value": device[m.name], "expires": expires})
            info = self._client.publish(self.topics.command(m.name), payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.exchanges.append(Exchange(cid, t_h, sent, {}, math.nan))
                raise PlantLinkLostError(
                    f"publishing setpoint {m.name} failed ({mqtt.error_string(info.rc)})"
                )
            mids.append(info.mid)
        deadline = t0 + timeout
        with self._cond:
            while cid not in self._confirms:
                refused = [self._refused[mid] for mid in mids if mid in self._refused]
                problem = None
                if refused:
                    problem = PlantError(
                        f"the broker refused the setpoints of command {cid} ({refused[0]}); "
                        "check the ACL of this user for the reactor's topics"
                    )
                elif not self._connected:
                    problem = PlantLinkLostError(
                        f"the broker connection dropped before command {cid} was confirmed "
                        f"({self._last_error})"
                    )
                elif time.perf_counter() > deadline:
                    problem = PlantError(
                        f"the device did not confirm command {cid} within {timeout:g} s"
                    )
                if problem is not None:
                    self.exchanges.append(Exchange(cid, t_h, sent, {}, math.nan))
                    raise problem
                self._cond.wait(min(0.05, max(deadline - time.perf_counter(), 1e-4)))
            confirm = self._confirms.pop(cid)
        held_device = confirm.get("held")
        if not isinstance(held_device, dict):
            self.exchanges.append(Exchange(cid, t_h, sent, {}, math.nan))
            raise PlantError(f"the device refused command {cid}: {confirm.get('refused', '?')}")
        held = {m.name: m.to_model(float(held_device[m.name])) for m in self.mapping.inputs}
        if self._offset_h is None and "t_h" in confirm:  # the device's clock against ours
            self._offset_h = float(confirm["t_h"]) - t_h
        self.exchanges.append(Exchange(cid, t_h, sent, held, time.perf_counter() - t0))
        return held

    def close(self) -> None:
        """Say goodbye (``offline``, retained), stop the heartbeat, disconnect (idempotent);
        the device falls back to its safe setpoints after its heartbeat timeout."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._connected:
            info = self._client.publish(self.topics.controller, "offline", qos=1, retain=True)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                info.wait_for_publish(1.0)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttPlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- paho callbacks (its network thread) -----------------------------------------------
    def _link_check(self) -> None:
        if not self._connected:
            raise PlantLinkLostError(
                f"no connection to the MQTT broker {self.host}:{self.port} "
                f"({self._last_error}); reconnecting"
            )

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._cond:
                self._refused_connect = f"refused: {reason_code}"
                self._last_error = self._refused_connect
                self._cond.notify_all()
            client.disconnect()  # a refused login is not retried
            return
        t = self.topics
        client.publish(t.controller, "online", qos=1, retain=True)
        client.subscribe(
            [(t.signal(o.name), 1) for o in self.mapping.outputs]
            + [(t.confirm, 1), (t.link, 1), (t.clock, 1)]
        )
        with self._cond:
            self._connected = True
            self._last_error = ""
            self._cond.notify_all()
        _log.info("MQTT gateway connected to %s:%s", self.host, self.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if self._connected and not self._closing.is_set():
                _log.warning("MQTT gateway: connection lost (%s); reconnecting", reason_code)
            self._connected = False
            if self._refused_connect is None:
                self._last_error = f"disconnected: {reason_code}"
            self._cond.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._cond:
                self._refused[mid] = str(reason_code)
                self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = self.topics
        try:
            text = msg.payload.decode()
            if msg.topic == t.link:
                with self._cond:
                    self._link = text
                return
            doc = json.loads(text)
            if msg.topic == t.clock:  # the device's samples up to ``now`` are all out
                with self._cond:
                    self._device_now_h = max(self._device_now_h, float(doc["now"]))
                    self._cond.notify_all()
                return
            if msg.topic == t.confirm:
                with self._cond:
                    self._confirms[int(doc["id"])] = doc
                    self._cond.notify_all()
                return
            o = self._by_topic.get(msg.topic)
            if o is not None:
                sample = (o.name, float(doc["v"]), float(doc["t"]))
                with self._cond:
                    self._samples.append(sample)
        except (ValueError, KeyError, TypeError) as exc:
            _log.warning("MQTT gateway: bad message on %s ignored (%s)", msg.topic, exc)

    def _beat(self) -> None:
        """Publish the heartbeat counter every ``heartbeat_period_s`` while connected."""
        period = self.mapping.heartbeat_period_s
        for beat in itertools.count(1):
            if self._connected:
                self._client.publish(self.topics.heartbeat, str(beat), qos=0)
            if self._closing.wait(period):
                return
