"""Drill objectives: loaded from a YAML file (default ``loadtests/objectives.yaml``) and checked
against a drill summary. Pure apart from reading the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from xregion.errors import XRegionError

DEFAULT_FILE = Path(__file__).with_name("objectives.yaml")
DEFAULTS = {"availability": 0.999, "rto_s": 5.0, "rpo_artifacts": 0, "rpo_metrics": None}
# objectives a scenario opts into (checked only when set): summary path, and whether the target is a minimum
EXTRA = {
    "rpo_registry": (("rpo", "registry", "missing"), False),  # acknowledged registry writes missing
    "reads_availability": (("by_kind", "reads", "availability"), True),  # MLflow reads (ReaderUser)
    "serving_failed": (("by_kind", "serving", "failed"), False),  # failed requests at the front door
    "split_brain_writes": (("split_brain", "accepted"), False),  # writes the old primary acknowledged
}
KEYS = set(DEFAULTS) | set(EXTRA)


class ObjectivesError(XRegionError, ValueError):
    pass


def load(path: Path | str | None = None, scenario: str | None = None) -> dict:
    """The objectives for ``scenario``: built-in defaults < the file's ``defaults`` < its ``scenarios[scenario]``."""
    path = Path(path) if path else DEFAULT_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ObjectivesError(f"cannot read objectives file {path}: {err}") from None
    if not isinstance(data, dict) or set(data) - {"defaults", "scenarios"}:
        raise ObjectivesError(
            f"{path}: expected the keys 'defaults' and 'scenarios' only, got {sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    out = dict(DEFAULTS)
    layers = [("defaults", data.get("defaults") or {})]
    if scenario:
        layers.append((f"scenarios.{scenario}", (data.get("scenarios") or {}).get(scenario) or {}))
    for where, layer in layers:
        if not isinstance(layer, dict):
            raise ObjectivesError(f"{path}: {where} must be a mapping")
        unknown = set(layer) - KEYS
        if unknown:
            raise ObjectivesError(
                f"{path}: {where}: unknown objective(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}"
            )
        for k, v in layer.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ObjectivesError(f"{path}: {where}.{k} must be a non-negative number or null, got {v!r}")
        out.update(layer)
    for k, v in list(out.items()):
        if k in EXTRA and v is None:
            del out[k]  # not set: not checked, not shown
    if out["availability"] is not None and out["availability"] > 1:
        raise ObjectivesError(f"{path}: availability is a fraction (0..1), got {out['availability']}")
    out["source"] = str(path)
    return out


def check(objectives: dict, summary: dict) -> list[dict]:
    """One row per objective: the target, the measured value and ``met`` (True/False, None = not applicable).

    ``summary`` is a drill summary: ``gated.availability``, ``rto_s``, ``fault_ts`` (None when
    the scenario injects no fault) and ``rpo`` ({"artifacts": {...}, "metrics": {...}} or absent).
    """
    rows = []

    def row(name, target, actual, met, note=""):
        rows.append({"objective": name, "target": target, "actual": actual, "met": met, "note": note})

    target = objectives.get("availability")
    avail = (summary.get("gated") or {}).get("availability")
    if avail is None:
        row("availability", target, None, False if target is not None else None, "no request was measured")
    else:
        row("availability", target, avail, None if target is None else avail >= target - 1e-12)

    target = objectives.get("rto_s")
    if summary.get("fault_ts") is None:
        row("rto_s", target, None, None, "no fault injected")
    elif summary.get("rto_s") is None:
        row("rto_s", target, None, None if target is None else False, "not recovered within the fault phase")
    else:
        row("rto_s", target, summary["rto_s"], None if target is None else summary["rto_s"] <= target + 1e-9)

    rpo = summary.get("rpo") or {}
    for kind in ("artifacts", "metrics"):
        target = objectives.get(f"rpo_{kind}")
        got = rpo.get(kind)
        if got is None:
            row(f"rpo_{kind}", target, None, None, "no writes in this scenario" if not rpo else "not read back")
        elif got.get("error"):
            row(f"rpo_{kind}", target, None, None if target is None else False, got["error"])
        else:
            row(
                f"rpo_{kind}",
                target,
                got["missing"],
                None if target is None else got["missing"] <= target,
                f"{got['missing']} of {got['acknowledged']} acknowledged missing",
            )
    rows += _extra_rows(objectives, summary)
    return rows


def _extra_rows(objectives: dict, summary: dict) -> list[dict]:
    rows = []
    for key, (path, minimum) in EXTRA.items():
        target = objectives.get(key)
        if target is None:
            continue
        got = summary
        for part in path:
            got = got.get(part) if isinstance(got, dict) else None
        if got is None:
            rows.append({"objective": key, "target": target, "actual": None, "met": False, "note": "not measured"})
            continue
        ok = got >= target - 1e-12 if minimum else got <= target + 1e-9
        rows.append({"objective": key, "target": target, "actual": got, "met": ok, "note": ""})
    return rows


def met(rows: list[dict]) -> bool:
    """True when no applicable objective failed."""
    return all(r["met"] is not False for r in rows)
