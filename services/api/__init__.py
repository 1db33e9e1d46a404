"""The live setpoint API: FastAPI over running loops, with roles, an audit chain and streams.

Control rooms read loop snapshots and records, and send operator commands that the
supervisor accepts or refuses; every write attempt is audited in a tamper-evident file
(:mod:`services.api.audit`). See ``docs/api.md``.
"""
