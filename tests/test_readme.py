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


def test_readme_and_docs_point_only_inside_the_repository() -> None:
    """Every file path the README and docs/ name exists here; nothing points outside."""
    root = README.parent
    for doc in (README, *sorted((root / "docs").glob("*.md"))):
        text = doc.read_text(encoding="utf-8")
        assert "../" not in text, f"{doc.name} points outside the repository"
        for path in re.findall(
            r"`((?:bpcontrol|models|estimators|services|hil|docs|examples|benchmarks|tests)/[\w/.-]+)`",
            text,
        ):
            if "<" in path or path.endswith("/"):
                assert (root / path.rstrip("/")).exists() or "<" in path, (doc.name, path)
                continue
            assert (root / path).exists(), f"{doc.name} names {path}, which does not exist"
