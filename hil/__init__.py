"""Hardware-in-the-loop: simulated plants and the data they record.

So far:

- :mod:`hil.synthetic`: recorded fed-batch data (true states, inputs and time-stamped,
  noisy, multi-rate, late readings) generated as a pure function of a model, a run
  configuration and a seed, with a CSV reader and writer for that data;
- :mod:`hil.plant`: :class:`SimulatedPlant`, an in-process plant for the closed loop
  (implements ``bpcontrol.interfaces.Plant``): the true model integrated by CVODES
  between reads and setpoint changes, seen through seeded noisy, drifting and lagging
  online probes and late offline assays; :func:`ecoli_plant` is the default E. coli
  scenario;
- :mod:`hil.faults`: controllers that raise, hang or return NaN, and plants that fail
  like field gateways, for fault tests;
- :mod:`hil.rig`: :class:`~hil.rig.RigPlant`, a real reactor's devices around the
  simulated plant: sensor effects (lag, noise, drift, quantisation, dropouts), actuator
  effects (saturation, resolution, dead time), scheduled probe, analyser, pump and
  cooling faults, and a base layer of temperature and pH PID loops;
- :mod:`hil.runner`: :func:`~hil.runner.run_scenario`, one closed-loop batch against the
  simulated plant with the embedded historian (the job behind ``bpcontrol run``).
"""

from hil.plant import ECOLI_PLANT_FACTORS, PlantTruth, SimulatedPlant, ecoli_plant
from hil.synthetic import (
    DataFormatError,
    OfflineAssays,
    Record,
    RecordedRun,
    SyntheticData,
    SyntheticRun,
    ecoli_fedbatch_run,
    exponential_feed,
    generate,
    read_csv,
    write_csv,
)

__all__ = [
    "ECOLI_PLANT_FACTORS",
    "DataFormatError",
    "OfflineAssays",
    "PlantTruth",
    "Record",
    "RecordedRun",
    "SimulatedPlant",
    "SyntheticData",
    "SyntheticRun",
    "ecoli_fedbatch_run",
    "ecoli_plant",
    "exponential_feed",
    "generate",
    "read_csv",
    "write_csv",
]
