"""Find a model by built-in name or load a process engineer's own model file by path."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from models._spec import Model, ModelError

BUILTIN: dict[str, str] = {
    "ecoli_fedbatch": "models.library.ecoli_fedbatch",
    "yeast_fedbatch": "models.library.yeast_fedbatch",
    "penicillin_fedbatch": "models.library.penicillin_fedbatch",
    "dompc_batch_reactor": "models.library.dompc_batch_reactor",
}


def available_models() -> list[str]:
    """Names of the models shipped with bpcontrol."""
    return sorted(BUILTIN)


def load_model(name_or_path: str | Path) -> Model:
    """A built-in model by name, or the ``MODEL`` defined in a Python file at a path.

    A model file defines ``MODEL = Model(...)`` (or a function ``model()`` returning one).
    Every problem raises :class:`ModelError` with one line naming the file.
    """
    text = str(name_or_path)
    if text in BUILTIN:
        return _from_module(importlib.import_module(BUILTIN[text]), text)
    path = Path(text)
    if path.suffix != ".py" and not path.exists():
        raise ModelError(
            f"unknown model {text!r}: use one of {', '.join(available_models())} "
            "or the path of a .py model file"
        )
    return _from_file(path)


def _from_file(path: Path) -> Model:
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    mod_name = f"bpcontrol_user_model_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    except SyntaxError as exc:
        raise ModelError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    except Exception as exc:
        raise ModelError(f"{path}: importing failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(mod_name, None)
    return _from_module(module, str(path))


def _from_module(module: object, where: str) -> Model:
    candidate = getattr(module, "MODEL", None)
    if candidate is None and callable(getattr(module, "model", None)):
        try:
            candidate = module.model()  # type: ignore[attr-defined]
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        except Exception as exc:
            raise ModelError(f"{where}: model() failed: {type(exc).__name__}: {exc}") from exc
    if candidate is None:
        raise ModelError(f"{where}: defines no MODEL (a models.Model) and no model() function")
    if not isinstance(candidate, Model):
        raise ModelError(f"{where}: MODEL is a {type(candidate).__name__}, not a models.Model")
    return candidate
