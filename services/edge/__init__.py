"""Edge gateways: the loop's Plant port over OPC UA (a LADS-shaped device) and MQTT.

- :mod:`services.edge.mapping`: the per-device mapping file (TOML) from the model's inputs
  and outputs to node ids, topics, units, scaling, ranges and safe setpoints;
- :mod:`services.edge.profile`: the LADS-shaped address space of a bioreactor unit;
- :mod:`services.edge.pki`: application certificates for tests and the demo device;
- :mod:`services.edge.opcua_gateway`: :class:`OpcUaPlant` (asyncua client, SignAndEncrypt);
- :mod:`services.edge.mqtt_gateway`: :class:`MqttPlant` (paho-mqtt against Mosquitto);
- :mod:`services.edge.link`: heartbeat and link supervision shared by both sides;
- :mod:`services.edge.setpoints`: the range check before sending and the exchange record;
- :mod:`services.edge.credentials`: the controller's device security file (TOML);
- :mod:`services.edge.broker`: a local Mosquitto (logins, per-reactor ACL, TLS) for the
  demo device and the tests.
"""
