"""The history of a chaos trial, as Jepsen records one: every operation's invocation and completion.

Each client process appends JSON lines to its own file, flushed per line so that a kill -9 loses
nothing already written: ``invoke`` before an operation starts, then ``ok`` (it happened),
``fail`` (it certainly did not happen) or ``info`` (unknown: a timeout, a server that died, an
error after which the write may still have landed). An invocation without a completion (its
client was killed in the middle) is indeterminate too, exactly like ``info``: such an operation
may take effect at any time afterwards, or never.

Times are ``time.monotonic_ns()``, one clock for every process of the host.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

NEVER = float("inf")  # completion time of an indeterminate operation
WRITES = ("put", "delete")


@dataclass
class Op:
    """One operation, its invocation and completion joined."""

    process: str
    index: int
    f: str  # put | delete | read | register | promote
    key: str  # relative to the trial's prefix; "" for registry operations
    value: str | None  # put: sha256 written; read: sha256 read (None: not found); registry: version
    invoked: float  # seconds since the trial's start
    completed: float  # seconds since the trial's start; NEVER when indeterminate
    type: str  # ok | fail | info
    error: str = ""
    via: str = ""  # direct:REGION | proxy:REGION | registry:REGION

    @property
    def acknowledged(self) -> bool:
        return self.type == "ok"

    @property
    def indeterminate(self) -> bool:
        return self.type == "info"

    def describe(self) -> str:
        end = "never (indeterminate)" if self.completed == NEVER else f"+{self.completed:.3f}s"
        value = "absent" if self.f == "read" and self.value is None else (self.value or "")[:12]
        what = f"{self.f} {self.key}".strip()
        err = f" ({self.error[:80]})" if self.error else ""
        return f"+{self.invoked:.3f}s {self.process} [{self.via}] {what} {value} -> {self.type} at {end}{err}"


class HistoryWriter:
    """A client's history file: one line per event, flushed at once (kill -9 keeps what was written)."""

    def __init__(self, path: Path, process: str, via: str):
        self.process, self.via = process, via
        self._f = open(path, "a", buffering=1)
        self._n = 0

    def _write(self, event: dict) -> None:
        self._f.write(json.dumps({**event, "process": self.process, "time": time.monotonic_ns()}) + "\n")
        self._f.flush()

    def invoke(self, f: str, key: str, value: str | None = None) -> int:
        self._n += 1
        self._write({"type": "invoke", "index": self._n, "f": f, "key": key, "value": value, "via": self.via})
        return self._n

    def complete(self, index: int, type_: str, value: str | None = None, error: str = "") -> None:
        self._write({"type": type_, "index": index, "value": value, "error": error[:300]})

    def close(self) -> None:
        self._f.close()


def read_history(paths: list[Path], start_ns: int) -> list[Op]:
    """Every operation of the trial, invocations joined with completions, ordered by invocation."""
    ops: list[Op] = []
    for path in paths:
        pending: dict[tuple[str, int], dict] = {}
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line: the process died while writing it
            ident = (ev["process"], ev["index"])
            t = (ev["time"] - start_ns) / 1e9
            if ev["type"] == "invoke":
                pending[ident] = ev | {"invoked": t}
                continue
            inv = pending.pop(ident, None)
            if inv is None:
                continue
            completed = NEVER if ev["type"] == "info" else t
            value = ev["value"] if inv["f"] in ("read", "register") or ev["value"] else inv["value"]
            ops.append(_op(inv, ev["type"], completed, value, ev.get("error", "")))
        # the client died in the middle of these: indeterminate
        ops += [_op(inv, "info", NEVER, inv["value"], "client died") for inv in pending.values()]
    return sorted(ops, key=lambda o: (o.invoked, o.process, o.index))


def _op(inv: dict, type_: str, completed: float, value, error: str) -> Op:
    return Op(
        process=inv["process"],
        index=inv["index"],
        f=inv["f"],
        key=inv["key"],
        value=value,
        invoked=inv["invoked"],
        completed=completed,
        type=type_,
        error=error,
        via=inv.get("via", ""),
    )
