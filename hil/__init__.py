"""Hardware-in-the-loop: simulated plants and the data they record.

So far: :mod:`hil.synthetic`, recorded fed-batch data (true states, inputs and
time-stamped, noisy, multi-rate, late readings) generated as a pure function of a model,
a run configuration and a seed, with a CSV reader and writer for that data.
"""

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
    "DataFormatError",
    "OfflineAssays",
    "Record",
    "RecordedRun",
    "SyntheticData",
    "SyntheticRun",
    "ecoli_fedbatch_run",
    "exponential_feed",
    "generate",
    "read_csv",
    "write_csv",
]
