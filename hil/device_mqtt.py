"""The MQTT side of the simulated bioreactor controller: a plant's signals over a broker.

:class:`DeviceMqtt` connects to a broker (paho-mqtt 2.x, MQTT 5) as the device's user and,
every ``poll_s`` of wall time, reads the plant at ``clock.now()`` and publishes each new
sample of the mapped outputs as retained state on ``<base>/<output>``
(``{"v": device value, "t": sample time h, "now": process time h}``, QoS 1), then its
process time on ``<base>/clock`` (``{"now": h}``: the samples of this poll are all out). Commands
arrive one message per input on ``<base>/<input>/set`` (``{"id", "value", "expires"}``);
once every input of a command id is in, the setpoints (clipped to the device range) are
applied to the plant and confirmed on ``<base>/confirm`` (``{"id", "held", "t_h"}``) and the
held values published retained on ``<base>/<input>``. A command id already applied is
confirmed again but not applied twice (a QoS 1 redelivery); an expired one is refused.
Every applied set is kept in :attr:`DeviceMqtt.write_log`.

Fail-safe as the OPC UA device (:mod:`hil.device_server`): once a heartbeat was seen on
``<base>/heartbeat``, a gap longer than ``heartbeat_timeout_s`` (also while the broker is
away) applies the mapping's safe setpoints, publishes ``lost`` on ``<base>/link`` and
``SafeState`` on ``<base>/state``; the next beat publishes ``ok``, the next command leaves
the safe state. The controller's last will (``lost`` on ``<base>/controller``) is logged.

On a :class:`bpcontrol.clock.SteppedClock` the device samples only when
:meth:`DeviceMqtt.step_to` moves its clock (lockstep with the loop, :mod:`hil.transport`),
and publishes its process time at every step, with or without new samples.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bpcontrol.clock import SteppedClock
from bpcontrol.interfaces import Clock, Plant
from hil.device_server import WriteEntry, held_now, sampling_period
from services.edge.link import HeartbeatWatch
from services.edge.mapping import DeviceMapping
from services.edge.mqtt_gateway import MqttSecurity, mqtt_client, topics_of

__all__ = ["DeviceMqtt"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Command:
    """One input of a controller command as it arrived."""

    command_id: int
    name: str
    value: float
    expires: float


@dataclass(frozen=True)
class _Step:
    """A lockstep step to ``t_h`` (h); ``done`` is set once its samples are published."""

    t_h: float
    done: threading.Event


class DeviceMqtt:
    """The simulated device over MQTT (module docstring). ``plant`` in model units."""

    def __init__(
        self,
        plant: Plant,
        clock: Clock,
        mapping: DeviceMapping,
        *,
        host: str,
        port: int,
        security: MqttSecurity | None,
        poll_s: float = 0.002,
        start_on_first_command: bool = False,
    ) -> None:
        self.plant, self.clock, self.mapping = plant, clock, mapping
        self.host, self.port, self.security = host, port, security
        self.topics = topics_of(mapping)
        self.poll_s = poll_s
        self._running_batch = not start_on_first_command
        self.write_log: list[WriteEntry] = []
        self.safe_events: list[tuple[float, float]] = []
        """(wall s when the device dropped to safe, seconds since the last heartbeat)."""
        self.refused: list[tuple[int, str]] = []
        """(command id, why) of each command the device refused (expired)."""
        self.controller_presence: list[str] = []
        """What arrived on ``<base>/controller`` (``online``, ``offline``, ``lost``)."""
        self._watch = HeartbeatWatch(mapping.heartbeat_timeout_s)
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[_Command | _Step | float] = queue.SimpleQueue()
        self._pending: dict[int, dict[str, float]] = {}
        self._last_command = 0
        self._confirmed: dict[int, dict[str, Any]] = {}
        self._safe = False
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._names = {self.topics.command(m.name): m.name for m in mapping.inputs}
        self._outputs = {o.name: o for o in mapping.outputs}
        self._link_ok_sent = True
        self._period_h = sampling_period(plant)
        self._next_instant_h = 0.0  # the plant has nothing new to read before this (h)
        self._stepped = isinstance(clock, SteppedClock)

    @property
    def endpoint(self) -> str:
        """``mqtt://host:port`` of the broker, and the device's topic base after it."""
        return f"mqtt://{self.host}:{self.port} ({self.topics.base}/...)"

    @property
    def safe(self) -> bool:
        """True while the device holds its safe setpoints after a lost heartbeat."""
        return self._safe

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self._connected.is_set()

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and start the device (returns once connected; raises when it cannot)."""
        if self._thread is not None:
            raise RuntimeError("MQTT device already running")
        self._stop.clear()
        client = mqtt_client(f"device-{self.mapping.name}-{uuid.uuid4().hex[:8]}", self.security)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(self.host, self.port, keepalive=5)
        client.loop_start()
        self._client = client
        if not self._connected.wait(timeout_s):
            client.disconnect()
            client.loop_stop()
            self._client = None
            raise RuntimeError(
                f"MQTT device {self.mapping.name}: broker {self.host}:{self.port} not reached "
                f"within {timeout_s:g} s"
            )
        self._thread = threading.Thread(
            target=self._run, name=f"device-mqtt-{self.mapping.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the device and disconnect (idempotent); the plant keeps its state."""
        thread, client = self._thread, self._client
        self._stop.set()
        if thread is not None:
            thread.join(timeout_s)
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._thread, self._client = None, None
        self._connected.clear()

    def step_to(self, t_h: float, timeout_s: float = 10.0) -> None:
        """Lockstep: move the device's stepped clock to ``t_h`` (h), read the plant if one of
        its sampling instants has passed, and return once its samples and then its process
        time are handed to the broker (a stopped device only moves its clock). Raises
        RuntimeError on a device with a paced clock or one that does not answer."""
        clock = self.clock
        if not isinstance(clock, SteppedClock):
            raise RuntimeError("step_to needs a device on a SteppedClock (lockstep)")
        if self._thread is None or not self._running_batch:
            clock.step_to(t_h)
            return
        step = _Step(float(t_h), threading.Event())
        self._inbox.put(step)
        if not step.done.wait(timeout_s):
            raise RuntimeError(
                f"MQTT device {self.mapping.name}: step to {t_h:.4f} h not published within "
                f"{timeout_s:g} s"
            )

    def __enter__(self) -> DeviceMqtt:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- paho callbacks (its network thread) -----------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            _log.error("MQTT device %s: broker refused: %s", self.mapping.name, reason_code)
            return
        t = self.topics
        client.subscribe(
            [(t.command(m.name), 1) for m in self.mapping.inputs]
            + [(t.heartbeat, 0), (t.controller, 1)]
        )
        client.publish(t.link, "lost" if self._safe else "ok", qos=1, retain=True)
        client.publish(t.state, "SafeState" if self._safe else "Running", qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = self.topics
        try:
            text = msg.payload.decode()
            if msg.topic == t.heartbeat:
                self._inbox.put(time.monotonic())
            elif msg.topic == t.controller:
                self.controller_presence.append(text)
                if text == "lost":
                    _log.warning("MQTT device %s: the controller's last will", self.mapping.name)
            elif msg.topic in self._names:
                doc = json.loads(text)
                self._inbox.put(
                    _Command(
                        int(doc["id"]),
                        self._names[msg.topic],
                        float(doc["value"]),
                        float(doc["expires"]),
                    )
                )
        except (ValueError, KeyError, TypeError) as exc:
            _log.warning("MQTT device: bad message on %s ignored (%s)", msg.topic, exc)

    # --- the device thread ---------------------------------------------------------------
    def _publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        client = self._client
        if client is not None:
            client.publish(topic, payload, qos=1, retain=retain)

    def _run(self) -> None:
        self._publish_held(held_now(self.plant, self.write_log, self.mapping))
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a plant failure is logged; the device stays up
                _log.exception("MQTT device %s: tick failed", self.mapping.name)

    def _tick(self) -> None:
        """Wait (<= ``poll_s``) for the first message, handle all that came, watch, sample."""
        wait: float | None = self.poll_s
        while True:
            try:
                item = self._inbox.get(timeout=wait) if wait else self._inbox.get_nowait()
            except queue.Empty:
                break
            wait = None
            if isinstance(item, float):
                self._alive(item)
            elif isinstance(item, _Step):
                assert isinstance(self.clock, SteppedClock)  # only step_to queues one
                self.clock.step_to(item.t_h)
                try:
                    self._sample(announce=True)
                finally:
                    item.done.set()
            else:  # a command is a sign of life too
                self._alive(time.monotonic())
                self._command(item)
        now = time.monotonic()
        if self._watch.lost(now) and not self._safe:
            self._go_safe(now)
        if self._running_batch and not self._stepped:  # stepped: each step samples
            self._sample()

    def _alive(self, wall_s: float) -> None:
        """The controller was heard at ``wall_s``: feed the watch, report the link back."""
        self._watch.beat(wall_s)
        if not self._link_ok_sent:
            self._publish(self.topics.link, "ok", retain=True)
            self._link_ok_sent = True

    def _command(self, c: _Command) -> None:
        if c.command_id <= self._last_command:  # a redelivery: confirm again, apply nothing
            done = self._confirmed.get(c.command_id)
            if done is not None:
                self._publish(self.topics.confirm, json.dumps(done))
            return
        if time.time() > c.expires:
            self._pending.pop(c.command_id, None)
            if not any(r[0] == c.command_id for r in self.refused):
                self.refused.append((c.command_id, "expired"))
                why = {"id": c.command_id, "refused": "expired"}
                self._publish(self.topics.confirm, json.dumps(why))
            return
        parts = self._pending.setdefault(c.command_id, {})
        parts[c.name] = c.value
        if len(parts) < len(self.mapping.inputs):
            return
        del self._pending[c.command_id]
        for stale in [k for k in self._pending if k < c.command_id]:
            del self._pending[stale]  # an incomplete older command is dropped
        setpoints = {
            m.name: m.to_model(min(max(parts[m.name], m.lower), m.upper))
            for m in self.mapping.inputs
        }
        self._last_command = c.command_id
        if not self._running_batch:  # the batch starts with the controller's first command
            restart = getattr(self.clock, "restart", None)
            if callable(restart):
                restart()
            self._running_batch = True
        if self._safe:
            self._safe = False
            self._publish(self.topics.state, "Running", retain=True)
        entry = self._apply(setpoints, c.command_id, publish=False)
        done = {
            "id": c.command_id,
            "held": {m.name: m.to_device(entry.held[m.name]) for m in self.mapping.inputs},
            "t_h": entry.t_h,
        }
        self._confirmed = {c.command_id: done}
        self._publish(self.topics.confirm, json.dumps(done))  # first: the controller waits
        self._publish_held(entry.held)

    def _publish_held(self, held: Mapping[str, float]) -> None:
        for m in self.mapping.inputs:
            doc = {"v": m.to_device(float(held[m.name])), "t": self.clock.now()}
            self._publish(self.topics.signal(m.name), json.dumps(doc), retain=True)

    def _apply(
        self, setpoints: Mapping[str, float], command_id: int, *, publish: bool = True
    ) -> WriteEntry:
        """Apply ``setpoints`` to the plant now, log it, publish the held values (retained)."""
        t = self.clock.now()
        held = self.plant.apply(t, setpoints)
        entry = WriteEntry(time.monotonic(), t, command_id, {k: float(v) for k, v in held.items()})
        with self._lock:
            self.write_log.append(entry)
        if publish:
            self._publish_held(entry.held)
        return entry

    def _go_safe(self, now: float) -> None:
        self._apply(self.mapping.safe_setpoints(), 0)
        self._link_ok_sent = False
        self._publish(self.topics.link, "lost", retain=True)
        self._publish(self.topics.state, "SafeState", retain=True)
        self.safe_events.append((time.monotonic(), self._watch.silent_s(now)))
        self._safe = True  # last: whoever sees it sees the log and events too
        _log.warning("MQTT device %s: heartbeat lost, safe setpoints applied", self.mapping.name)

    def _sample(self, *, announce: bool = False) -> None:
        """Publish each new sample, then the process time: the set of this poll is complete
        (``announce``: the process time also when there is no new sample, as a step must).

        A plant that declares its sampling period (``period_h``) is read only once one of
        its instants has passed (between them it has nothing new, and reading it at every
        poll held the GIL from the loop in the same process)."""
        t = self.clock.now()
        if self._period_h is not None and t < self._next_instant_h - 1e-9:
            if announce:
                self._publish(self.topics.clock, json.dumps({"now": t}))
            return
        if self._period_h is not None:
            self._next_instant_h = (math.floor(t / self._period_h + 1e-9) + 1) * self._period_h
        readings = self.plant.read(t)
        for r in readings:
            if r.sensor not in self._outputs:
                continue
            o = self._outputs[r.sensor]
            ts = t if r.t_sample is None else float(r.t_sample)
            doc = {"v": o.to_device(float(r.value)), "t": ts, "now": t}
            self._publish(self.topics.signal(o.name), json.dumps(doc), retain=True)
        if readings or announce:
            self._publish(self.topics.clock, json.dumps({"now": t}))
