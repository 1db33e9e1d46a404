"""The README's example model file loads and evaluates (documentation stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models import load_model

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_example_loads(tmp_path: Path) -> None:
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    path = tmp_path / "my_model.py"
    path.write_text(block.group(1))
    model = load_model(path)
    f = model.to_casadi().rhs(model.x0, model.u0, model.p0)
    # volume balance of the example: dV/dt = F
    assert np.isclose(f[model.index("V")], model.u0[0])
