"""Services around the loop: historian (InfluxDB, embedded store), live API, edge gateways.

They implement the small interfaces that ``bpcontrol`` defines and import from it, never the
other way round (see DESIGN.md). Arriving with the milestones after the core loop.
"""
