"""Services around the loop: historian (InfluxDB, embedded store), live API, edge gateways.

They implement the small interfaces that ``bpcontrol.interfaces`` defines and import from
``bpcontrol``, never the other way round (see DESIGN.md). Here now: the embedded historian
(:mod:`services.historian`); the InfluxDB historian, the live API and the OPC UA / MQTT
gateways arrive with the milestones after the core loop.
"""
