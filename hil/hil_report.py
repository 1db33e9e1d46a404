"""Reports of a HIL campaign for QA: JUnit XML (CI) and one self-contained HTML page.

Both list every scenario with its seed and each criterion's bound, measured value and
verdict; the HTML page adds the versions of the software under test, the run folders
and, per scenario, its figure (DO and setpoints over time with the fault windows:
:mod:`hil.scenario_figure`) and the command that reproduces it alone. Nothing is fetched
from the network: the page carries its own style and its figures as PNG data URIs.
"""

from __future__ import annotations

import html
import math
import platform
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from hil.campaign import ScenarioOutcome

__all__ = ["reproduce_command", "versions", "write_html", "write_junit"]

_PACKAGES = ("bpcontrol", "numpy", "scipy", "casadi", "jax", "dask", "distributed")


def versions() -> dict[str, str]:
    """Python, the platform and the versions of the packages a run depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def reproduce_command(suite_path: str, name: str) -> str:
    """The command that runs one scenario of the suite again (same spec, same seed)."""
    return f"bpcontrol hil run {suite_path} --only {name}"


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def write_junit(
    path: str | Path, suite_name: str, outcomes: Sequence[ScenarioOutcome], *, suite_path: str
) -> Path:
    """JUnit XML: one testcase per scenario; a failed criterion is a ``failure``, a
    scenario that could not run an ``error``."""
    path = Path(path)
    failures = sum(not o.passed and not o.error for o in outcomes)
    errors = sum(bool(o.error) for o in outcomes)
    total_s = sum(o.wall_s for o in outcomes if math.isfinite(o.wall_s))
    root = ET.Element("testsuites", name=suite_name)
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite_name,
        tests=str(len(outcomes)),
        failures=str(failures),
        errors=str(errors),
        time=f"{total_s:.3f}",
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    for o in outcomes:
        case = ET.SubElement(
            ts, "testcase", classname=f"hil.{suite_name}", name=o.name, time=f"{o.wall_s:.3f}"
        )
        props = ET.SubElement(case, "properties")
        for key, value in (
            ("pack", o.pack),
            ("seed", str(o.seed)),
            ("run_dir", o.run_dir),
            ("reproduce", reproduce_command(suite_path, o.name)),
        ):
            ET.SubElement(props, "property", name=key, value=value)
        for c in o.criteria:
            ET.SubElement(props, "property", name=f"criterion.{c.name}", value=c.message)
        if o.error:
            ET.SubElement(case, "error", message=o.error, type="ScenarioError").text = o.error
        elif not o.passed:
            failed = o.failed_criteria()
            message = "; ".join(c.message for c in failed) or f"run {o.state}: {o.reason}"
            names = ",".join(c.name for c in failed) or "run_state"
            ET.SubElement(case, "failure", message=message, type=names).text = message
        ET.SubElement(case, "system-out").text = "\n".join(c.message for c in o.criteria)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
.pass{color:#176f2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
code{background:#f4f4f4;padding:0 .3em}
h2{margin-top:2em;border-bottom:1px solid #ddd}
img.figure{max-width:100%;border:1px solid #ddd}
"""


def write_html(
    path: str | Path,
    suite_name: str,
    outcomes: Sequence[ScenarioOutcome],
    *,
    suite_path: str,
    description: str = "",
    executor: str = "local",
    extra: Mapping[str, str] | None = None,
) -> Path:
    """One self-contained HTML page of the campaign (see the module docstring)."""
    path = Path(path)
    esc = html.escape
    passed = sum(o.passed for o in outcomes)
    verdict = "pass" if passed == len(outcomes) else "fail"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>HIL suite {esc(suite_name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>HIL suite {esc(suite_name)}: <span class='{verdict}'>"
        f"{passed} of {len(outcomes)} passed</span></h1>",
        f"<p>{esc(description)}</p>",
        f"<p>suite file <code>{esc(suite_path)}</code>, executor {esc(executor)}, "
        f"written {datetime.now(UTC).isoformat(timespec='seconds')}</p>",
        "<h2>Versions</h2><table>",
    ]
    info = {**versions(), **(extra or {})}
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in info.items()]
    parts.append("</table><h2>Scenarios</h2><table><tr><th>scenario</th><th>pack</th>")
    parts.append("<th>seed</th><th>result</th><th>wall s</th><th>failed</th></tr>")
    for o in outcomes:
        cls = "pass" if o.passed else "fail"
        failed = ", ".join(c.name for c in o.failed_criteria()) or (o.error and "error") or ""
        parts.append(
            f"<tr><td><a href='#{esc(o.name)}'>{esc(o.name)}</a></td><td>{esc(o.pack)}</td>"
            f"<td>{o.seed}</td><td class='{cls}'>{cls.upper()}</td><td>{o.wall_s:.1f}</td>"
            f"<td>{esc(failed)}</td></tr>"
        )
    parts.append("</table>")
    for o in outcomes:
        cls = "pass" if o.passed else "fail"
        parts.append(
            f"<h2 id='{esc(o.name)}'>{esc(o.name)}: <span class='{cls}'>{cls.upper()}</span></h2>"
        )
        parts.append(
            f"<p>pack {esc(o.pack)}, seed {o.seed}, run {esc(o.state or '-')} "
            f"{esc(o.reason)}; worker {esc(o.worker)}</p>"
        )
        parts.append(f"<p>reproduce: <code>{esc(reproduce_command(suite_path, o.name))}</code></p>")
        if o.run_dir:
            parts.append(f"<p>run folder <code>{esc(o.run_dir)}</code>")
            if o.report:
                parts.append(f" (<a href='{esc(Path(o.report).as_uri())}'>plots</a>)")
            parts.append("</p>")
        if o.error:
            parts.append(f"<p class='fail'>{esc(o.error)}</p>")
        if o.figure.startswith("data:image/png;base64,"):
            parts.append(
                f"<p><img class='figure' alt='{esc(o.name)}: DO and setpoints over process "
                f"time' src='{o.figure}'></p>"
            )
        parts.append("<table><tr><th>criterion</th><th>bound</th><th>measured</th>")
        parts.append("<th>result</th></tr>")
        for c in o.criteria:
            ccls = "pass" if c.passed else "fail"
            parts.append(
                f"<tr><td>{esc(c.name)}</td><td>{esc(c.bound)}</td><td>{_fmt(c.measured)}</td>"
                f"<td class='{ccls}'>{ccls.upper()}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path
