"""report.json, written a line at a time: each top-level key on a line of its own, and
each element of a top-level array (``cycles``: one per cycle) on a line of its own.

Every value is encoded as ``json``'s C encoder encodes it (``indent`` would force the
pure-Python encoder, 3x slower): the report's own cycle entries (``CycleEntry``, a long
night's hundreds of thousands of values) by ``EntryTexts``, which writes the same bytes
from the entry's typed fields, each repeated value (a verdict, a step's name, a second's
time, a rounded duration) encoded once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from math import isfinite
from typing import Any, TextIO

from .model import AttemptEntry, CycleEntries, CycleEntry

# Encoded texts remembered per kind of value, up to this many each (a night's distinct
# verdicts, step names, seconds and rounded durations: a few thousand).
_MEMO_MAX = 1 << 16
# Lines written to the file at a time (one write per line was a tenth of the time).
_BATCH = 512


def json_encoder() -> Callable[[Any], str]:
    """``json``'s encoding of a value, as report.json writes it (the C encoder; no check
    for circular references: the report is a tree)."""
    return json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


class _Texts(dict[Any, str]):
    """Values of one type and their JSON texts, each encoded once (keys of one type only:
    ``1 == 1.0 == True``, and ``0.0 == -0.0``, which are written differently, are never
    kept)."""

    def __init__(self, encode: Callable[[Any], str]) -> None:
        super().__init__()
        self._encode = encode

    def __missing__(self, key: Any) -> str:
        text = self._encode(key)
        if len(self) < _MEMO_MAX and (key.__class__ is not float or (key and key == key)):
            self[key] = text
        return text


class EntryTexts:
    """Cycle entries as report.json writes them: the bytes ``json_encoder`` writes for
    ``entry.as_dict()``, from the entry's fields."""

    def __init__(self, encode: Callable[[Any], str] | None = None) -> None:
        self._encode = encode = encode or json_encoder()
        self._strings = _Texts(encode)  # str or None
        self._durations = _Texts(encode)  # float or None

    def _number(self, x: float | None) -> str:
        """A float as the C encoder writes it (``repr``; NaN and the infinities by name)."""
        if x.__class__ is float and isfinite(x):
            return float.__repr__(x)
        return self._encode(x)

    def cycle(self, e: CycleEntry) -> str:
        # The hot path of a long night's report.json: each entry unpacked at once, no
        # call per value it can avoid.
        s, f, encode = self._strings, self._durations, self._encode
        (
            number,
            status,
            verdict,
            seed,
            started,
            ended,
            started_ts,
            ended_ts,
            duration,
            fallback,
            knobs_off,
            folder,
            attempts,
        ) = e
        return (
            f'{{"cycle": {number}, "status": {s[status]}, "verdict": {s[verdict]}, '
            f'"input_seed": {encode_basestring(seed) if seed.__class__ is str else encode(seed)}, '
            f'"started_at": {s[started]}, "ended_at": {s[ended]}, '
            f'"started_ts": {self._number(started_ts)}, "ended_ts": {self._number(ended_ts)}, '
            f'"duration_s": {f[duration]}, "fallback": {"true" if fallback else "false"}, '
            f'"knobs_off": {encode(knobs_off) if knobs_off else "{}"}, '
            f'"artifacts_dir": {encode_basestring(folder) if folder.__class__ is str else encode(folder)}, '
            f'"attempts": [{", ".join(map(self._attempt, attempts))}]}}'
        )

    def _attempt(self, a: AttemptEntry) -> str:
        s, f, encode = self._strings, self._durations, self._encode
        (
            n,
            session,
            verdict,
            started,
            ended,
            duration,
            step,
            error_type,
            message,
            component,
            kind,
            fallback,
            knobs_off,
            artifacts,
            steps,
        ) = a
        steps_text = ", ".join(
            [
                f'{{"name": {s[name]}, "outcome": {s[outcome]}, "duration_s": {f[d]}}}'
                for name, outcome, d in steps
            ]
        )
        return (
            f'{{"attempt": {n}, "session": {session}, "verdict": {s[verdict]}, '
            f'"started_at": {s[started]}, "ended_at": {s[ended]}, "duration_s": {f[duration]}, '
            f'"step": {s[step]}, "error_type": {s[error_type]}, "error_message": {s[message]}, '
            f'"fault_component": {s[component]}, "fault_kind": {s[kind]}, '
            f'"fallback": {"true" if fallback else "false"}, '
            f'"knobs_off": {encode(knobs_off) if knobs_off else "{}"}, '
            f'"artifacts": {encode(artifacts) if artifacts else "[]"}, "steps": [{steps_text}]}}'
        )


def write_json(
    report: dict[str, Any],
    out: TextIO,
    each_cycle: Callable[[dict[str, Any] | CycleEntry], None] | None = None,
) -> None:
    """report.json from the report, the cycles one at a time, never the whole document as
    one string. ``each_cycle`` is given each cycle's entry once it is written (a
    ``CycleEntry`` for the report's own ``CycleEntries``, else the list's dict)."""
    encode = json_encoder()
    out.write("{")
    sep = "\n  "
    for key, value in report.items():
        out.write(f"{sep}{encode(key)}: ")
        if not isinstance(value, list | CycleEntries):
            out.write(encode(value))
        elif not len(value):
            out.write("[]")
        else:
            each = each_cycle if key == "cycles" else None
            if isinstance(value, CycleEntries):
                _write_lines(out, _entry_lines(value, EntryTexts(encode), each))
            else:
                _write_lines(out, _item_lines(value, encode, each))
            out.write("\n  ]")
        sep = ",\n  "
    out.write("\n}\n")


def _entry_lines(
    entries: CycleEntries, texts: EntryTexts, each: Callable[[CycleEntry], None] | None
) -> Iterable[str]:
    for entry in entries.typed():
        yield texts.cycle(entry)
        if each is not None:
            each(entry)


def _item_lines(
    items: list[Any], encode: Callable[[Any], str], each: Callable[[Any], None] | None
) -> Iterable[str]:
    for item in items:
        yield encode(item)
        if each is not None:
            each(item)


def _write_lines(out: TextIO, lines: Iterable[str]) -> None:
    """``[`` and the array's elements, a line each (the caller closes it)."""
    batch = ["["]
    append = batch.append
    inner = "\n    "
    for line in lines:
        append(inner)
        append(line)
        inner = ",\n    "
        if len(batch) >= _BATCH:
            out.write("".join(batch))
            batch.clear()
    out.write("".join(batch))
