"""The import graph follows the dependency direction of the design (``DESIGN.md``).

Imports only point down ``models`` <- ``estimators`` <- ``bpcontrol`` <- ``services`` <-
``hil``: a package may import the packages before it in this list, never one after it. Only
the composition root (``bpcontrol/cli.py`` and ``bpcontrol/cli_*.py``) may import upward.
No module imports a private module (or private name) of another top-level package:
``from models._math import X`` inside ``estimators`` is forbidden, ``models._math`` inside
``models`` is fine.

Every ``.py`` file of the five packages is parsed with :mod:`ast`; every ``import x`` and
``from x import y`` counts, at any depth (inside functions, ``if TYPE_CHECKING:`` blocks,
``try``), relative imports resolved against the file's package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("models", "estimators", "bpcontrol", "services", "hil")
"""Lowest first: a package may import itself and the packages before it."""
RANK = {name: k for k, name in enumerate(LAYERS)}

ALLOWED: frozenset[tuple[str, str]] = frozenset()
"""Known violations, (file relative to the repository root, imported module): none."""


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported} ({self.why})"


def module_name(rel: Path) -> str:
    """``bpcontrol/nmpc/_rti.py`` -> ``bpcontrol.nmpc._rti``; a package's ``__init__`` -> it."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_composition_root(rel: str) -> bool:
    name = Path(rel).name
    return (
        rel.startswith("bpcontrol/")
        and Path(rel).parent == Path("bpcontrol")
        and (name == "cli.py" or (name.startswith("cli_") and name.endswith(".py")))
    )


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted target) for every import in ``tree``, at any depth.

    ``from a.b import c`` gives ``a.b.c`` (``c`` may be a submodule or a name: either way it
    is something of ``a.b``); relative imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level > len(parts):  # beyond the top-level package: Python refuses
                    found.append((node.lineno, "." * node.level + (node.module or "")))
                    continue
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                found.append((node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"))
    return found


def check_source(source: str, rel: str) -> list[Violation]:
    """The violations of the rules in one file ``rel`` (relative path, ``/``-separated)."""
    path = Path(rel)
    module = module_name(path)
    own = module.split(".")[0]
    tree = ast.parse(source, filename=rel)
    out: list[Violation] = []
    for line, target in imported_modules(tree, module, path.name == "__init__.py"):
        parts = target.split(".")
        top = parts[0]
        if top not in RANK or top == own:
            continue  # third-party, standard library, or the file's own package
        if RANK[top] > RANK[own] and not is_composition_root(rel):
            out.append(Violation(rel, line, target, f"{own} may not import {top}"))
        elif any(_private(p) for p in parts[1:]):
            out.append(Violation(rel, line, target, f"private to {top}"))
    return out


def check_tree(root: Path) -> list[Violation]:
    violations: list[Violation] = []
    for package in LAYERS:
        for file in sorted((root / package).rglob("*.py")):
            rel = file.relative_to(root).as_posix()
            violations += check_source(file.read_text(encoding="utf-8"), rel)
    return violations


def test_imports_point_down_and_stay_public() -> None:
    violations = check_tree(ROOT)
    unexpected = [v for v in violations if (v.path, v.imported) not in ALLOWED]
    assert not unexpected, "dependency violations:\n" + "\n".join(map(str, unexpected))


def test_the_allow_list_holds_only_live_violations() -> None:
    """An allowed violation that was fixed must leave the list (so the list can only shrink)."""
    live = {(v.path, v.imported) for v in check_tree(ROOT)}
    assert not ALLOWED - live, f"fixed, remove from ALLOWED: {sorted(ALLOWED - live)}"


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        ("models/_spec.py", "import estimators\n", ["models/_spec.py:1: imports estimators"]),
        (
            "estimators/_ekf.py",
            "def f():\n    from hil.plant import ecoli_plant\n",
            ["estimators/_ekf.py:2: imports hil.plant.ecoli_plant"],
        ),
        (
            "estimators/_ekf.py",
            "from models._math import NUMPY\n",
            ["estimators/_ekf.py:1: imports models._math.NUMPY"],
        ),
        ("hil/x.py", "from models import _math\n", ["hil/x.py:1: imports models._math"]),
        (
            "services/historian/x.py",
            "try:\n    import hil.runner\nexcept ImportError:\n    pass\n",
            ["services/historian/x.py:2: imports hil.runner"],
        ),
        ("bpcontrol/loop.py", "import services.historian as h\n", ["bpcontrol/loop.py:1:"]),
        # allowed: downward, own private modules, relative inside the package, dunders,
        # third-party, and the composition root importing upward
        ("hil/runner.py", "from bpcontrol import __version__\nimport numpy\n", []),
        ("estimators/x.py", "from models import Model\nfrom ._ekf import F\n", []),
        ("bpcontrol/nmpc/_rti.py", "from bpcontrol.nmpc._ocp import OCP\n", []),
        ("bpcontrol/cli.py", "def run():\n    from hil.runner import run_scenario\n", []),
        ("bpcontrol/cli_pack.py", "from services.historian import read_records\n", []),
    ],
)
def test_the_checker_flags_synthetic_violations(rel: str, source: str, expected: list[str]) -> None:
    found = [str(v) for v in check_source(source, rel)]
    assert len(found) == len(expected), found
    for text, prefix in zip(found, expected, strict=True):
        assert text.startswith(prefix), (text, prefix)


@pytest.mark.parametrize(
    ("module", "is_package", "source", "expected"),
    [
        ("bpcontrol.nmpc._rti", False, "from ._ocp import OCP", "bpcontrol.nmpc._ocp.OCP"),
        ("bpcontrol.nmpc._rti", False, "from .. import loop", "bpcontrol.loop"),
        ("bpcontrol.nmpc._rti", False, "from ..records import *", "bpcontrol.records"),
        ("bpcontrol.nmpc", True, "from ._config import X", "bpcontrol.nmpc._config.X"),
        ("models", True, "from .library import ecoli_fedbatch", "models.library.ecoli_fedbatch"),
        ("models._spec", False, "from ... import x", "..."),  # beyond the top: not resolved
        ("hil.x", False, "import services.historian as h, numpy", "services.historian"),
    ],
)
def test_relative_imports_are_resolved(
    module: str, is_package: bool, source: str, expected: str
) -> None:
    targets = [t for _, t in imported_modules(ast.parse(source), module, is_package)]
    assert targets[0] == expected, targets


def test_importing_the_cli_stays_light() -> None:
    """``bpcontrol --version`` and ``--help`` start fast: no numerics at import time."""
    heavy = ("numpy", "scipy", "jax", "casadi", "matplotlib", "pandas", *LAYERS[:2], *LAYERS[3:])
    code = (
        "import sys, bpcontrol, bpcontrol.cli\n"
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"imported by bpcontrol.cli: {out.stdout.strip()}"
