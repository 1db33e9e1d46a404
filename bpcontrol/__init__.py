"""bpcontrol: real-time monitoring and nonlinear model-predictive control of fed-batch
fermentations.

The command line (``bpcontrol --help``) is the composition root; the kinetic models live
in the sibling package :mod:`models`.
"""

__version__ = "0.1.0"
