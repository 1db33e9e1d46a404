"""Time setpoint round trips through the edge gateways, beside the raw libraries.

On loopback, in one process and one run, ``--writes`` times each (issue 20):

* ``OpcUaPlant.apply``: the four TargetValues and a command id in one write request
  (Basic256Sha256 SignAndEncrypt, user login), then ConfirmedCommandId and the
  CurrentValues read until the device says it applied them (the device server over the
  simulated E. coli plant, ``hil.device_server``);
* raw asyncua, same session security: one Double written, then read back;
* ``MqttPlant.apply``: four QoS 1 commands with one id through a real Mosquitto (password
  file, ACL), the device (``hil.device_mqtt``) applies and confirms, the gateway receives
  the confirmation;
* raw paho: one QoS 1 publish from one client to another through the same broker, until
  the receiver's ``on_message``.

The device runs in a process of its own (as a real device would), the gateway in the
benchmark's. Each write alternates between two setpoint sets (every one changes the device).
Reported: median, p99 and max ms per round trip. Run from the repository root::

    .venv/bin/python benchmarks/bench_edge.py --writes 1000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
from _machine import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "edge"))

from asyncua import ua
from edge_rig import (
    MAPPING,
    Pki,
    client_security,
    device_security,
    make_pki,
    start_broker,
)

from bpcontrol.clock import PacedClock
from hil.device_mqtt import DeviceMqtt
from hil.device_server import DeviceServer
from hil.plant import ecoli_plant
from models import load_model
from services.edge.mapping import load_mapping
from services.edge.mqtt_gateway import MqttPlant, MqttSecurity, mqtt_client
from services.edge.opcua_gateway import OpcUaPlant, secure_client

SETS = (
    {"F": 0.12, "Q_air": 12.0, "N_stir": 900.0, "T_set": 36.5},
    {"F": 0.10, "Q_air": 11.0, "N_stir": 850.0, "T_set": 36.0},
)


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {
        "n": float(len(ms)),
        "median_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def _timed(n: int, once: Callable[[int], object]) -> list[float]:
    out = []
    for k in range(n):
        t0 = time.perf_counter()
        once(k)
        out.append(time.perf_counter() - t0)
    return out


def _serve_opcua(pki: Pki, out: Queue[Any], stop: Event) -> None:
    """The device server in its own process (as a real device is): endpoint, then writes."""
    model = load_model("ecoli_fedbatch")
    mapping = load_mapping(MAPPING, model)
    clock = PacedClock(1.0)  # process time barely moves: the plant's cost per write is small
    device = DeviceServer(ecoli_plant(model, seed=1), clock, mapping, security=device_security(pki))
    device.start()
    out.put(device.endpoint)
    stop.wait()
    out.put(sum(1 for e in device.write_log if e.command_id != 0))
    device.stop()


def _serve_mqtt(port: int, out: Queue[Any], stop: Event) -> None:
    """The MQTT side of the device in its own process: ready, then its write count."""
    model = load_model("ecoli_fedbatch")
    mapping = load_mapping(MAPPING, model)
    device = DeviceMqtt(
        ecoli_plant(model, seed=1),
        PacedClock(1.0),
        mapping,
        host="127.0.0.1",
        port=port,
        security=MqttSecurity("r1-device", "pw-r1d"),
    )
    device.start()
    out.put(device.endpoint)
    stop.wait()
    out.put(sum(1 for e in device.write_log if e.command_id != 0))
    device.stop()


def bench_opcua(n: int, root: Path) -> dict[str, dict[str, float]]:
    """The OPC UA gateway's confirmed write and raw asyncua write + read, same security."""
    mapping = load_mapping(MAPPING, load_model("ecoli_fedbatch"))
    pki = make_pki(root / "pki")
    ctx = mp.get_context("spawn")
    out: Queue[Any] = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve_opcua, args=(pki, out, stop), daemon=True)
    proc.start()
    try:
        endpoint = out.get(timeout=60.0)
        with OpcUaPlant(endpoint, mapping, security=client_security(pki)) as plant:
            for k in range(20):  # warm-up
                plant.apply(0.0, SETS[k % 2])
            gateway = _timed(n, lambda k: plant.apply(0.0, SETS[k % 2]))
        raw = asyncio.run(_raw_asyncua(n, endpoint, pki, mapping.inputs[0].target))
        stop.set()
        applied = out.get(timeout=30.0)
        assert applied == 20 + n, (applied, n)  # every write applied once
    finally:
        stop.set()
        proc.join(15.0)
        if proc.is_alive():
            proc.kill()
    return {"opcua gateway apply (SignAndEncrypt)": _stats(gateway), "raw asyncua": _stats(raw)}


async def _raw_asyncua(n: int, endpoint: str, pki: Pki, node_id: str) -> list[float]:
    client = await secure_client(endpoint, client_security(pki), timeout_s=5.0)
    await client.connect()
    try:
        node = client.get_node(node_id)
        out = []
        for k in range(n + 20):
            value = 100.0 + (k % 2)
            t0 = time.perf_counter()
            await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
            back = await node.read_value()
            dt_s = time.perf_counter() - t0
            assert back == value
            if k >= 20:
                out.append(dt_s)
        return out
    finally:
        await client.disconnect()


def bench_mqtt(n: int, root: Path) -> dict[str, dict[str, float]]:
    """The MQTT gateway's confirmed write and a raw paho QoS 1 publish -> receive."""
    mapping = load_mapping(MAPPING, load_model("ecoli_fedbatch"))
    broker = start_broker(root / "mosquitto")
    ctx = mp.get_context("spawn")
    out: Queue[Any] = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve_mqtt, args=(broker.port, out, stop), daemon=True)
    proc.start()
    try:
        out.get(timeout=60.0)
        login = MqttSecurity("r1-controller", "pw-r1c")
        with MqttPlant("127.0.0.1", broker.port, mapping, security=login) as plant:
            for k in range(20):
                plant.apply(0.0, SETS[k % 2])
            gateway = _timed(n, lambda k: plant.apply(0.0, SETS[k % 2]))
        stop.set()
        applied = out.get(timeout=30.0)
        assert applied == 20 + n, (applied, n)
        proc.join(15.0)
        raw = _raw_paho(n, broker.port)
    finally:
        stop.set()
        proc.join(15.0)
        if proc.is_alive():
            proc.kill()
        broker.stop()
    return {"mqtt gateway apply (QoS 1)": _stats(gateway), "raw paho QoS 1": _stats(raw)}


def _raw_paho(n: int, port: int) -> list[float]:
    got = threading.Event()
    sub = mqtt_client("bench-sub", MqttSecurity("r1-device", "pw-r1d"))
    pub = mqtt_client("bench-pub", MqttSecurity("r1-controller", "pw-r1c"))
    subscribed = threading.Event()
    sub.on_message = lambda c, u, m: got.set()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe("bpcontrol/lab1/r1/F/set", qos=1)
    for c in (sub, pub):
        c.connect("127.0.0.1", port)
        c.loop_start()
    try:
        if not subscribed.wait(5.0):
            raise RuntimeError("raw paho subscriber did not subscribe")
        out = []
        for k in range(n + 20):
            got.clear()
            t0 = time.perf_counter()
            pub.publish("bpcontrol/lab1/r1/F/set", f"{k}", qos=1)
            if not got.wait(5.0):
                raise RuntimeError("raw paho message not received")
            if k >= 20:
                out.append(time.perf_counter() - t0)
        return out
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--writes", type=int, default=1000, help="round trips per path")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        results = bench_opcua(args.writes, Path(tmp))
        results.update(bench_mqtt(args.writes, Path(tmp)))
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"Machine: {os.cpu_count()} cores, {cpu_model()!r}, Python {platform.python_version()}; "
        f"{started:%Y-%m-%d %H:%M} UTC; load average before {' '.join(load_before)}, "
        f"after {' '.join(load_after)}\n"
    )
    print("| path | round trips | median ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, s in results.items():
        print(
            f"| {name} | {int(s['n'])} | {s['median_ms']:.3f} | {s['p99_ms']:.3f} "
            f"| {s['max_ms']:.3f} |"
        )
    p99 = results["opcua gateway apply (SignAndEncrypt)"]["p99_ms"]
    verdict = "met" if p99 <= 20 else "NOT met"
    print(f"\nOPC UA SignAndEncrypt p99 {p99:.2f} ms: target <= 20 ms {verdict}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
