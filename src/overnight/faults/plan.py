"""Fault plans: which fault to inject into which component, when, and for how long.

From the command line, one spec per ``--inject``::

    db:connection_lost@cycle=23
    llm:quota_exceeded@cycle=45,duration=30s
    search:timeout@after=2h,duration=5m
    llm:rate_limited@every=10m,probability=0.5

or a TOML file for ``--faults`` with one ``[[fault]]`` table per entry and the same keys::

    [[fault]]
    target = "llm"              # a component of the config
    kind = "quota_exceeded"     # the fault kind the agent should diagnose
    cycle = 45                  # when: cycle = N | after = "2h" | every = "10m" (+ after)
    duration = "30s"            # how long: duration = "30s" | until = "repaired"
    retry_after = 30            # parameters of the fault (see PARAMS)

A spec is checked here for its own shape; ``faults.injectors.check`` then checks it
against the components it targets (kind supported, target at home) before the night
starts. Every error is one line naming the entry.
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..chaos.http import STATUSES
from ..errors import ConfigError

WHEN_KEYS = ("cycle", "after", "every", "probability")
HOW_LONG_KEYS = ("duration", "until")
# Parameters any injector may read; each injector says which ones it honours.
PARAMS: dict[str, str] = {
    "latency": "duration: how long the dependency stalls (timeout) or delays each chunk (proxy)",
    "jitter": "duration: ± uniform jitter on proxy latency",
    "bytes_per_s": "number: bandwidth limit (proxy) or slow response body (HTTP)",
    "status": "HTTP status code of the injected error",
    "retry_after": "duration: the Retry-After the server announces (rate_limited, quota_exceeded)",
    "count": "number of requests answered with the error (server_error bursts)",
    "method": "how: 'terminate' | 'revoke' | 'stop' (PostgreSQL), 'close' | 'lock' (Qdrant), "
    "'switch' | 'http' | 'proxy'",
    "below": "size in GB: how far under the free-disk threshold a disk fill goes (default 0.25)",
    "max_duration": "duration: cap of an until=repaired fault (default 300s)",
    "stop_command": "shell command that stops the local server (method = 'stop')",
    "start_command": "shell command that starts it again",
}
DURATION_PARAMS = ("latency", "jitter", "retry_after", "max_duration")
_NUMBER_PARAMS = ("bytes_per_s", "status", "count", "below")
_STRING_PARAMS = ("method", "stop_command", "start_command")
_SPEC = re.compile(r"^(?P<target>[A-Za-z0-9_.-]+):(?P<kind>[a-z_]+)(?:@(?P<rest>.*))?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DEFAULT_MAX_DURATION_S = 300.0
_LONGEST_S = 7 * 24 * 3600.0  # the longest night (max_hours = 168)


@dataclass(frozen=True)
class FaultSpec:
    """One entry of a fault plan, normalised (durations in seconds)."""

    source: str  # where it came from, for messages: "faults.toml: fault[2]", "--inject[1]"
    target: str
    kind: str
    cycle: int | None = None
    after_s: float | None = None
    every_s: float | None = None
    probability: float = 1.0
    duration_s: float | None = None
    until_repaired: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    @property
    def id(self) -> str:
        """Stable within a night: ledger events name the fault by it (``collect`` numbers
        unnamed faults in plan order)."""
        return self.name or f"{self.target}:{self.kind}"

    @property
    def where(self) -> str:
        return f"{self.source} ({self.target}:{self.kind})"

    def label(self) -> str:
        """The spec back in ``--inject`` syntax (as normalised; stop/start commands left out)."""
        parts = []
        if self.cycle is not None:
            parts.append(f"cycle={self.cycle}")
        if self.after_s is not None:
            parts.append(f"after={format_duration(self.after_s)}")
        if self.every_s is not None:
            parts.append(f"every={format_duration(self.every_s)}")
        if self.probability < 1:
            parts.append(f"probability={self.probability:g}")
        if self.duration_s is not None:
            parts.append(f"duration={format_duration(self.duration_s)}")
        if self.until_repaired:
            parts.append("until=repaired")
        for key, value in sorted(self.params.items()):
            if key.endswith("_command"):
                continue  # commands stay in the plan, out of event messages and tables
            shown = format_duration(value) if key in DURATION_PARAMS else value
            parts.append(f"{key}={shown}")
        return f"{self.target}:{self.kind}@{','.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def fires(self, seed: int, occurrence: int) -> bool:
        """Whether occurrence ``occurrence`` happens: seeded, so a resumed night agrees."""
        if self.probability >= 1:
            return True
        return random.Random(f"{seed}:{self.id}:{occurrence}").random() < self.probability


def parse_duration(value: Any, what: str) -> float:
    """``30s``, ``5m``, ``2h``, ``250ms`` or a number of seconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration like 30s, 5m or 2h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{what}: expected a duration like 30s, 5m or 2h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what}: expected a duration >= 0, got {value!r}")
    if seconds > _LONGEST_S:
        raise ValueError(f"{what}: expected at most {format_duration(_LONGEST_S)} (a night), got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what}: expected a number >= 0, got {value!r}")
    return number


def build_spec(entry: dict[str, Any], source: str) -> FaultSpec:
    """A spec from its keys (TOML table or parsed ``--inject``); ConfigError names ``source``."""
    target, kind = entry.get("target"), entry.get("kind")
    label = f"{source} ({target}:{kind})" if target and kind else source
    try:
        return _build(entry, source)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _build(entry: dict[str, Any], source: str) -> FaultSpec:
    entry = dict(entry)
    target = entry.pop("target", None)
    kind = entry.pop("kind", None)
    name = entry.pop("name", None)
    if not isinstance(target, str) or not target:
        raise ValueError('target: name the component to break, e.g. target = "db"')
    if not isinstance(kind, str) or not kind:
        raise ValueError('kind: name the fault kind, e.g. kind = "connection_lost"')
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:#-]+", name)):
        raise ValueError(f"name: expected letters, digits and _.:#- only, got {name!r}")
    cycle = entry.pop("cycle", None)
    if cycle is not None:
        if isinstance(cycle, bool) or (not isinstance(cycle, int) and not str(cycle).isdigit()):
            raise ValueError(f"cycle: expected a cycle number >= 1, got {cycle!r}")
        cycle = int(cycle)
        if cycle < 1:
            raise ValueError(f"cycle: expected a cycle number >= 1, got {cycle}")
    after = entry.pop("after", None)
    after_s = parse_duration(after, "after") if after is not None else None
    every = entry.pop("every", None)
    every_s = parse_duration(every, "every") if every is not None else None
    if every_s is not None and every_s < 1:
        raise ValueError(f"every: expected at least 1s, got {every!r}")
    probability = entry.pop("probability", 1.0)
    probability = _number(probability, "probability")
    if not 0 < probability <= 1:
        raise ValueError(f"probability: expected a number in (0, 1], got {probability:g}")
    if cycle is None and after_s is None and every_s is None:
        raise ValueError("say when: cycle=N, after=DURATION or every=DURATION")
    if cycle is not None and (after_s is not None or every_s is not None):
        raise ValueError("cycle cannot be combined with after or every; use one of them")
    duration = entry.pop("duration", None)
    duration_s = parse_duration(duration, "duration") if duration is not None else None
    if duration_s is not None and duration_s <= 0:
        raise ValueError("duration: expected more than 0s")
    until = entry.pop("until", None)
    if until is not None and until != "repaired":
        raise ValueError(f"until: the only value is 'repaired', got {until!r}")
    if until is not None and duration_s is not None:
        raise ValueError("give duration or until=repaired, not both")
    params: dict[str, Any] = {}
    for key, value in entry.items():
        if key not in PARAMS:
            known = ", ".join([*WHEN_KEYS, *HOW_LONG_KEYS, *PARAMS])
            raise ValueError(f"unknown key {key!r} (known: {known})")
        if key in DURATION_PARAMS:
            params[key] = parse_duration(value, key)
        elif key in _NUMBER_PARAMS:
            number = _number(value, key)
            if key in ("status", "count"):
                if not number.is_integer() or number < 1:
                    raise ValueError(f"{key}: expected a whole number >= 1, got {value!r}")
                number = int(number)
            params[key] = number
        elif key in _STRING_PARAMS:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{key}: expected a non-empty string")
            params[key] = value
    if "status" in params:
        allowed = STATUSES.get(kind)
        if allowed is None:
            raise ValueError(f"status: {kind} has no HTTP status of its own")
        if params["status"] not in allowed:
            want = "a 5xx status" if kind == "server_error" else " or ".join(map(str, allowed))
            raise ValueError(f"status: {kind} needs {want}, not {params['status']}")
    return FaultSpec(
        source=source,
        target=target,
        kind=kind,
        cycle=cycle,
        after_s=after_s,
        every_s=every_s,
        probability=probability,
        duration_s=duration_s,
        until_repaired=until == "repaired",
        params=params,
        name=name,
    )


def parse_inject(text: str, source: str) -> FaultSpec:
    """One ``--inject`` value: ``TARGET:KIND@key=value,key=value``."""
    match = _SPEC.match(text.strip())
    if not match:
        raise ConfigError(
            f"{source}: {text!r}: expected TARGET:KIND@WHEN[,key=value...], e.g. db:connection_lost@cycle=23"
        )
    entry: dict[str, Any] = {"target": match.group("target"), "kind": match.group("kind")}
    rest = match.group("rest") or ""
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(f"{source} ({entry['target']}:{entry['kind']}): {part!r}: expected key=value")
        if key in entry:
            raise ConfigError(f"{source} ({entry['target']}:{entry['kind']}): {key} is given twice")
        entry[key] = value.strip()
    return build_spec(entry, source)


def load_plan(path: Path) -> list[FaultSpec]:
    """A ``--faults`` TOML file: ``[[fault]]`` tables."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: fault plan not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the fault plan: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"fault"})
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(extra)}; expected [[fault]] tables")
    entries = data.get("fault")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no faults: add [[fault]] tables (target, kind, when)")
    specs = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: fault[{i}]: expected a table")
        specs.append(build_spec(entry, f"{path.name}: fault[{i}]"))
    return specs


def collect(plan_files: list[Path], injects: list[str]) -> list[FaultSpec]:
    """All faults of a night, from ``--faults`` files then ``--inject`` values; ids unique."""
    specs = [s for p in plan_files for s in load_plan(p)]
    specs += [parse_inject(text, f"--inject[{i}]") for i, text in enumerate(injects, 1)]
    # Unnamed faults are numbered in plan order: "llm:quota_exceeded#2".
    specs = [s if s.name else replace(s, name=f"{s.target}:{s.kind}#{i}") for i, s in enumerate(specs, 1)]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.id in seen:
            raise ConfigError(f"{spec.where}: its name {spec.id!r} is already used by {seen[spec.id]}")
        seen[spec.id] = spec.source
    return specs
