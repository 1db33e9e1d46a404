"""The address space of a bioreactor unit, shaped after OPC UA LADS (OPC 30500-1).

LADS models a laboratory device as a ``LADSDeviceType`` with a ``FunctionalUnitSet``; each
functional unit has a ``FunctionSet`` of ``AnalogSensorFunctionType`` (``SensorValue`` with
``EURange`` and ``EngineeringUnits``, ``RawValue``) and ``AnalogControlFunctionType``
(``TargetValue``, ``CurrentValue``), a state and a ``ProgramManager`` whose
``ActiveProgram`` carries ``SupervisoryJobId``, ``SupervisoryTaskId`` and
``DeviceProgramRunId``. This module builds those shapes as its own ObjectTypes in the
device namespace (the real LADS nodeset is not imported: no open one exists for a
bioreactor, and the gateway needs only the variables the mapping names)::

    Objects/DeviceSet/<name>                      BioreactorDeviceType (after LADSDeviceType)
      Heartbeat (UInt64, written by the controller), LinkOk, ProcessTime (h), SetpointWrites
      SetpointCommandId (written with the targets), ConfirmedCommandId (the device applied it)
      FunctionalUnitSet/Reactor                   FunctionalUnitType
        State ("Running", "SafeState")
        ProgramManager/ActiveProgram: SupervisoryJobId, SupervisoryTaskId, DeviceProgramRunId
        FunctionSet/<function>                    AnalogSensorFunctionType
          SensorValue (EURange, EngineeringUnits), RawValue, SampleTime (h)
        FunctionSet/<function>                    AnalogControlFunctionType
          TargetValue (writable; EURange, EngineeringUnits), CurrentValue

The variables carry the mapping's node ids, so a mapping file describes the simulated
device and the gateway alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncua import Node, Server, ua

from services.edge.mapping import DeviceMapping

__all__ = ["DeviceNodes", "build_device"]


@dataclass
class DeviceNodes:
    """The variables of one device, by role (model names as keys)."""

    heartbeat: Node
    link_ok: Node
    process_time: Node
    writes: Node
    command_id: Node
    confirmed_id: Node
    state: Node
    run_ids: dict[str, Node]
    targets: dict[str, Node] = field(default_factory=dict)
    currents: dict[str, Node] = field(default_factory=dict)
    values: dict[str, Node] = field(default_factory=dict)
    raws: dict[str, Node] = field(default_factory=dict)
    sample_times: dict[str, Node] = field(default_factory=dict)


def _eu(unit: str) -> ua.EUInformation:
    info = ua.EUInformation()
    info.NamespaceUri = "http://www.opcfoundation.org/UA/units/un/cefact"
    info.DisplayName = ua.LocalizedText(unit)
    info.Description = ua.LocalizedText(unit)
    return info


async def _analog(
    parent: Node, idx: int, node_id: str, name: str, lo: float, hi: float, unit: str
) -> Node:
    var = await parent.add_variable(
        ua.NodeId.from_string(node_id), ua.QualifiedName(name, idx), 0.0, ua.VariantType.Double
    )
    await var.add_property(idx, "EURange", ua.Range(Low=lo, High=hi))
    await var.add_property(idx, "EngineeringUnits", _eu(unit))
    return var


async def build_device(server: Server, mapping: DeviceMapping, idx: int) -> DeviceNodes:
    """Add the device's types and objects for ``mapping`` to ``server`` (namespace ``idx``)."""
    base = server.nodes.base_object_type
    device_type = await base.add_object_type(idx, "BioreactorDeviceType")
    unit_type = await base.add_object_type(idx, "FunctionalUnitType")
    sensor_type = await base.add_object_type(idx, "AnalogSensorFunctionType")
    control_type = await base.add_object_type(idx, "AnalogControlFunctionType")
    device_set = await server.nodes.objects.add_folder(idx, "DeviceSet")
    device = await device_set.add_object(idx, mapping.name, objecttype=device_type.nodeid)
    name = mapping.name

    def nid(suffix: str) -> ua.NodeId:
        return ua.NodeId.from_string(f"ns={idx};s={name}.{suffix}")

    heartbeat = await device.add_variable(
        nid("Heartbeat"), ua.QualifiedName("Heartbeat", idx), 0, ua.VariantType.UInt64
    )
    await heartbeat.set_writable()
    link_ok = await device.add_variable(nid("LinkOk"), ua.QualifiedName("LinkOk", idx), False)
    process_time = await device.add_variable(
        nid("ProcessTime"), ua.QualifiedName("ProcessTime", idx), 0.0
    )
    writes = await device.add_variable(
        nid("SetpointWrites"), ua.QualifiedName("SetpointWrites", idx), 0, ua.VariantType.UInt32
    )
    command_id = await device.add_variable(
        nid("SetpointCommandId"),
        ua.QualifiedName("SetpointCommandId", idx),
        0,
        ua.VariantType.UInt64,
    )
    await command_id.set_writable()
    confirmed_id = await device.add_variable(
        nid("ConfirmedCommandId"),
        ua.QualifiedName("ConfirmedCommandId", idx),
        0,
        ua.VariantType.UInt64,
    )
    units = await device.add_folder(idx, "FunctionalUnitSet")
    unit = await units.add_object(idx, "Reactor", objecttype=unit_type.nodeid)
    state = await unit.add_variable(nid("Reactor.State"), ua.QualifiedName("State", idx), "Running")
    programs = await unit.add_object(idx, "ProgramManager")
    active = await programs.add_object(idx, "ActiveProgram")
    run_ids = {}
    for key in ("SupervisoryJobId", "SupervisoryTaskId", "DeviceProgramRunId"):
        run_ids[key] = await active.add_variable(
            nid(f"Reactor.{key}"), ua.QualifiedName(key, idx), ""
        )
        await run_ids[key].set_writable()
    functions = await unit.add_folder(idx, "FunctionSet")
    nodes = DeviceNodes(
        heartbeat, link_ok, process_time, writes, command_id, confirmed_id, state, run_ids
    )
    for m in mapping.inputs:
        fn = await functions.add_object(idx, m.function, objecttype=control_type.nodeid)
        target = await _analog(fn, idx, m.target, "TargetValue", m.lower, m.upper, m.unit)
        await target.set_writable()
        nodes.targets[m.name] = target
        nodes.currents[m.name] = await fn.add_variable(
            ua.NodeId.from_string(m.current),
            ua.QualifiedName("CurrentValue", idx),
            0.0,
            ua.VariantType.Double,
        )
    for o in mapping.outputs:
        fn = await functions.add_object(idx, o.function, objecttype=sensor_type.nodeid)
        nodes.values[o.name] = await _analog(
            fn, idx, o.value, "SensorValue", o.lower, o.upper, o.unit
        )
        nodes.raws[o.name] = await fn.add_variable(idx, "RawValue", 0.0, ua.VariantType.Double)
        nodes.sample_times[o.name] = await fn.add_variable(
            ua.NodeId.from_string(o.sample_time),
            ua.QualifiedName("SampleTime", idx),
            -1.0,
            ua.VariantType.Double,
        )
    return nodes
