"""The MQTT gateway against the simulated device through a real Mosquitto on loopback.

The broker denies anonymous clients, checks a password file and applies a per-reactor ACL
(``edge_rig.ACL``); the device (``hil.device_mqtt``) and the gateway are paho clients.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from edge_rig import Broker, CountingPlant, make_tls, start_broker

from bpcontrol.clock import PacedClock
from bpcontrol.interfaces import PlantError, PlantLinkLostError
from hil.device_mqtt import DeviceMqtt
from hil.plant import ecoli_plant
from models import Model
from services.edge.mapping import DeviceMapping
from services.edge.mqtt_gateway import MqttPlant, MqttSecurity

SETPOINTS = {"F": 0.12, "Q_air": 12.0, "N_stir": 900.0, "T_set": 36.5}
CONTROLLER = MqttSecurity("r1-controller", "pw-r1c")
DEVICE = MqttSecurity("r1-device", "pw-r1d")


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _commands(device: DeviceMqtt) -> list[int]:
    """The controller command ids the device applied, in order (its safe fallbacks aside)."""
    return [e.command_id for e in device.write_log if e.command_id != 0]


@pytest.fixture
def mqtt_device(model: Model, mapping: DeviceMapping, broker: Broker) -> Iterator[DeviceMqtt]:
    """The simulated E. coli reactor on the test's broker, its clock 600x."""
    device = DeviceMqtt(
        ecoli_plant(model, seed=3),
        PacedClock(600.0),
        mapping,
        host="127.0.0.1",
        port=broker.port,
        security=DEVICE,
    )
    device.start()
    try:
        yield device
    finally:
        device.stop()


def _gateway(broker: Broker, mapping: DeviceMapping, security: MqttSecurity | None) -> MqttPlant:
    return MqttPlant("127.0.0.1", broker.port, mapping, security=security, connect_timeout_s=5.0)


def test_round_trip_setpoints_and_readings(
    mqtt_device: DeviceMqtt, mapping: DeviceMapping, broker: Broker
) -> None:
    with _gateway(broker, mapping, CONTROLLER) as plant:
        assert plant.input_names == ("F", "Q_air", "N_stir", "T_set")
        held = plant.apply(mqtt_device.clock.now(), SETPOINTS)
        assert held == pytest.approx(SETPOINTS, rel=1e-12)
        (exchange,) = plant.exchanges
        assert exchange.confirmed and exchange.held == pytest.approx(SETPOINTS, rel=1e-12)
        entry = mqtt_device.write_log[-1]
        assert entry.command_id == exchange.command_id
        assert entry.held == pytest.approx(SETPOINTS, rel=1e-12)
        time.sleep(0.3)  # 600x: 3 min of process time, at least 2 new 1-min samples
        readings = plant.read(mqtt_device.clock.now())
        assert {"DO_probe", "y_O2_out", "y_CO2_out", "V_meas"} <= {r.sensor for r in readings}
        do = [r for r in readings if r.sensor == "DO_probe"]
        assert len(do) >= 2  # every sample, not only the latest
        assert all(0.0 <= r.value <= 200.0 for r in do)  # the probe's range (% saturation)
        times = [float(r.t_sample or 0.0) for r in do]
        assert times == sorted(times) and len(set(times)) == len(times)
        # the device heard the controller's presence
        assert "online" in mqtt_device.controller_presence


def test_out_of_range_setpoint_is_refused_before_sending(
    mqtt_device: DeviceMqtt, mapping: DeviceMapping, broker: Broker
) -> None:
    with _gateway(broker, mapping, CONTROLLER) as plant:
        plant.apply(mqtt_device.clock.now(), SETPOINTS)
        applied, sent = _commands(mqtt_device), len(plant.exchanges)
        with pytest.raises(PlantError, match=r"N_stir = 1500 \(1500 rpm\) is outside"):
            plant.apply(mqtt_device.clock.now(), {**SETPOINTS, "N_stir": 1500.0})
        with pytest.raises(PlantError, match="F = nan"):
            plant.apply(mqtt_device.clock.now(), {**SETPOINTS, "F": math.nan})
        time.sleep(0.1)
        assert _commands(mqtt_device) == applied and len(plant.exchanges) == sent


@pytest.mark.parametrize(
    "login",
    [None, MqttSecurity("r1-controller", "guess"), MqttSecurity("nobody", "x")],
    ids=["no credentials", "wrong password", "unknown user"],
)
def test_refused_logins_write_nothing(
    mqtt_device: DeviceMqtt, mapping: DeviceMapping, broker: Broker, login: MqttSecurity | None
) -> None:
    with pytest.raises(PlantError, match=r"cannot connect \(refused: Not authorized"):
        _gateway(broker, mapping, login)
    time.sleep(0.1)
    assert _commands(mqtt_device) == []


def test_another_reactors_controller_cannot_write(
    mqtt_device: DeviceMqtt, mapping: DeviceMapping, broker: Broker
) -> None:
    # r2's controller logs in fine but the ACL refuses every publish on r1's topics
    with _gateway(broker, mapping, MqttSecurity("r2-controller", "pw-r2c")) as intruder:
        with pytest.raises(PlantError, match=r"broker refused the setpoints .* \(Not authorized\)"):
            intruder.apply(mqtt_device.clock.now(), SETPOINTS)
        assert not intruder.exchanges[-1].confirmed
    time.sleep(0.2)
    assert _commands(mqtt_device) == []
    # and the controller cannot pose as the device: its measurement publish is refused
    with _gateway(broker, mapping, CONTROLLER) as plant:
        info = plant._client.publish("bpcontrol/lab1/r1/DO_probe", '{"v":1,"t":0,"now":0}', qos=1)
        info.wait_for_publish(2.0)
        assert _wait(lambda: info.mid in plant._refused, 2.0)


def test_heartbeat_loss_drops_the_device_to_safe_setpoints(
    mqtt_device: DeviceMqtt, mapping: DeviceMapping, broker: Broker
) -> None:
    plant = _gateway(broker, mapping, CONTROLLER)
    plant.apply(mqtt_device.clock.now(), SETPOINTS)
    plant.close()  # the controller is gone: no more heartbeats
    t0 = time.monotonic()
    timeout = mapping.heartbeat_timeout_s
    assert _wait(lambda: mqtt_device.safe, timeout + 2.0)
    reached = time.monotonic() - t0
    entry = mqtt_device.write_log[-1]
    assert entry.command_id == 0 and entry.held == pytest.approx(mapping.safe_setpoints())
    ((_, silent_s),) = mqtt_device.safe_events
    # the watch runs every poll (2 ms): safe no earlier than the timeout after the last beat,
    # and within it plus a 0.25 s margin (poll, thread wake-ups on 2 busy cores)
    print(f"\nMQTT device safe {silent_s:.3f} s after the last beat (timeout {timeout:g} s)")
    assert timeout <= silent_s <= timeout + 0.25
    assert reached <= timeout + 0.25
    assert mqtt_device.controller_presence[-1] == "offline"
    # a controller that comes back sees the lost link until its beat arrives, then commands
    with _gateway(broker, mapping, CONTROLLER) as again:
        assert _wait(lambda: _link_ok(again, mqtt_device), 3.0)
        held = again.apply(mqtt_device.clock.now(), SETPOINTS)
        assert held == pytest.approx(SETPOINTS) and not mqtt_device.safe


def test_last_will_marks_the_controller_lost(
    mqtt_device: DeviceMqtt, mapping: DeviceMapping, broker: Broker
) -> None:
    with _gateway(broker, mapping, CONTROLLER) as plant:
        plant.apply(mqtt_device.clock.now(), SETPOINTS)
        assert _wait(lambda: "online" in mqtt_device.controller_presence, 2.0)
        sock = plant._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the link breaks without a goodbye
        # the broker publishes the will; then paho reconnects and says online again
        assert _wait(lambda: "lost" in mqtt_device.controller_presence, 10.0)
        assert _wait(lambda: mqtt_device.controller_presence[-1] == "online", 10.0)
        held = plant.apply(mqtt_device.clock.now(), {**SETPOINTS, "T_set": 36.0})
        assert held["T_set"] == pytest.approx(36.0)


def _link_ok(plant: MqttPlant, device: DeviceMqtt) -> bool:
    try:
        plant.read(device.clock.now())
    except PlantLinkLostError:
        return False
    return True


def test_broker_outage_raises_link_lost_and_the_gateway_reconnects(
    mqtt_device: DeviceMqtt, mapping: DeviceMapping, broker: Broker
) -> None:
    with _gateway(broker, mapping, CONTROLLER) as plant:
        plant.apply(mqtt_device.clock.now(), SETPOINTS)
        broker.kill()
        assert _wait(lambda: not plant.connected, 10.0)
        with pytest.raises(PlantLinkLostError, match="no connection"):
            plant.read(mqtt_device.clock.now())
        with pytest.raises(PlantLinkLostError):
            plant.apply(mqtt_device.clock.now(), SETPOINTS)
        time.sleep(1.0)  # a short outage (below the device's heartbeat timeout)
        again = broker.restart()
        try:
            assert _wait(lambda: plant.connected and mqtt_device.connected, 15.0)
            held = plant.apply(mqtt_device.clock.now(), {**SETPOINTS, "F": 0.2})
            assert held["F"] == pytest.approx(0.2)
            # the device's write log and the gateway's records agree: each confirmed
            # command applied once, nothing applied that was not confirmed
            confirmed = [x.command_id for x in plant.exchanges if x.confirmed]
            assert _commands(mqtt_device) == confirmed
        finally:
            again.stop()


def test_tls_broker_round_trip_and_plain_client_refused(
    model: Model, mapping: DeviceMapping, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    broker = start_broker(tmp_path / "mosquitto", tls=tls)
    try:
        device = DeviceMqtt(
            ecoli_plant(model, seed=3),
            PacedClock(600.0),
            mapping,
            host="127.0.0.1",
            port=broker.port,
            security=replace(DEVICE, ca_certs=tls.cafile),
        )
        device.start()
        try:
            login = replace(CONTROLLER, ca_certs=tls.cafile)
            with _gateway(broker, mapping, login) as plant:
                assert plant.apply(device.clock.now(), SETPOINTS) == pytest.approx(SETPOINTS)
            # the same login without TLS gets no MQTT session on the TLS listener
            with pytest.raises(PlantError, match="cannot connect"):
                MqttPlant(
                    "127.0.0.1", broker.port, mapping, security=CONTROLLER, connect_timeout_s=2.0
                )
            assert len(_commands(device)) == 1
        finally:
            device.stop()
    finally:
        broker.stop()


def test_device_reads_its_plant_once_per_sampling_instant(
    model: Model, mapping: DeviceMapping, broker: Broker
) -> None:
    """As the OPC UA device: 1 min samples at 600x are 0.1 s of wall time, so about 10
    reads of the plant in 1 s, not one per 2 ms poll (~500); every sample still arrives."""
    plant = CountingPlant(ecoli_plant(model, seed=3))
    clock = PacedClock(600.0)
    device = DeviceMqtt(
        plant,  # type: ignore[arg-type]
        clock,
        mapping,
        host="127.0.0.1",
        port=broker.port,
        security=DEVICE,
    )
    device.start()
    try:
        with _gateway(broker, mapping, CONTROLLER) as gw:
            gw.apply(clock.now(), SETPOINTS)
            reads0, t0 = plant.reads, clock.now()
            time.sleep(1.0)
            instants = (clock.now() - t0) * 60.0  # 1-min instants passed
            do = [r for r in gw.read(clock.now()) if r.sensor == "DO_probe"]
    finally:
        device.stop()
    assert plant.reads - reads0 <= instants + 2
    assert plant.reads - reads0 >= instants - 2
    assert len(do) >= instants - 2  # every sample of the second still arrived


def test_a_device_in_lockstep_samples_only_when_stepped(
    model: Model, mapping: DeviceMapping, broker: Broker
) -> None:
    """On a SteppedClock the MQTT device reads its plant only when stepped and announces
    its process time at every step (new samples or not), so the gateway's read after a
    step waits for exactly that step's samples."""
    from bpcontrol.clock import SteppedClock

    plant = CountingPlant(ecoli_plant(model, seed=3))
    clock = SteppedClock()
    device = DeviceMqtt(
        plant,  # type: ignore[arg-type]
        clock,
        mapping,
        host="127.0.0.1",
        port=broker.port,
        security=DEVICE,
        start_on_first_command=True,
    )
    device.start()
    try:
        gw = MqttPlant("127.0.0.1", broker.port, mapping, security=CONTROLLER, sample_wait_s=10.0)
        with gw:
            gw.apply(0.0, SETPOINTS)
            device.step_to(0.0)
            first = gw.read(0.0)
            assert {"DO_probe", "V_meas"} <= {r.sensor for r in first}
            reads = plant.reads
            time.sleep(0.3)  # paced at 600x this would be 3 min of process time
            assert plant.reads == reads
            device.step_to(0.5 / 60.0)  # between instants: no read, the time announced
            assert gw.read(0.5 / 60.0) == [] and plant.reads == reads
            for k in range(1, 6):
                t = k / 60.0
                device.step_to(t)
                got = gw.read(t)
                assert [r.t_sample for r in got] == pytest.approx([t] * len(got), abs=1e-12)
                assert "DO_probe" in {r.sensor for r in got}
            assert plant.reads == reads + 5
    finally:
        device.stop()
    paced = DeviceMqtt(
        plant,  # type: ignore[arg-type]
        PacedClock(600.0),
        mapping,
        host="127.0.0.1",
        port=broker.port,
        security=DEVICE,
    )
    with pytest.raises(RuntimeError, match="SteppedClock"):
        paced.step_to(1.0)
