"""The do-mpc-style example in examples/ runs as a user would run it, and its loop works.

``examples/main.py`` exits non-zero unless the EKF + NMPC loop makes more product than
the recipe alone on the same plant (25 % slower growth than the model); here it must
also print both figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_do_mpc_style_example_runs_and_beats_its_recipe(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "main.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"NMPC: ([\d.]+) g; recipe alone: ([\d.]+) g", proc.stdout)
    assert match, proc.stdout
    closed, alone = map(float, match.groups())
    # the recipe feeds 0.48 L of 150 g/L substrate; the optimum fills the 5 L vessel
    # below the inhibition range: about twice the product (2.05 measured)
    assert closed > 1.5 * alone
