"""The plan of a night: what to run and within which bounds. Stored in the ledger.

A resumed night is rebuilt from its stored plan, not from whatever the config file says
today, so "the same night" means the same scenario, seed, cycles and settings.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import (
    LoadedConfig,
    RunConfig,
    describe_validation_error,
    format_validation_error,
    validate_config,
)
from ..errors import ConfigError, UsageError
from ..redaction import MASK

DRY_RUN_CYCLES = 3


@dataclass
class Plan:
    scenario: str
    cycles: int
    parallel: int
    retry_attempts: int
    cycle_timeout: float
    max_hours: float | None
    until: str | None
    seed: int
    night_dir: str
    retry_backoff: float = 1.0
    dry_run: bool = False
    config_path: str | None = None
    key_prefix: str = ""
    config_raw: dict[str, Any] = field(default_factory=dict)
    # The night's fault plan (``--faults``, ``--inject``), as normalised specs.
    faults: list[dict[str, Any]] = field(default_factory=list)
    # Protected settings the command line chose for this night (they are in the config's
    # settings too): shown in the report as the night's plan choices.
    choices: dict[str, Any] = field(default_factory=dict)
    # A pytest suite's arguments from the command line (``overnight run -- -k smoke``), after
    # the config's ``[pytest] args``: they choose what is tested, so they are the plan's.
    pytest_args: list[str] = field(default_factory=list)
    # Where the cycles run (``executor``): the night's own process, or workers.
    executor: str = "inline"
    ray_address: str | None = None

    @classmethod
    def from_config(
        cls,
        loaded: LoadedConfig,
        night_dir: Path,
        overrides: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
        faults: list[dict[str, Any]] | None = None,
        choices: Mapping[str, Any] | None = None,
        pytest_args: list[str] | None = None,
    ) -> Plan:
        """The night's plan: the config's ``[run]`` with the command line's values over
        it, checked by the one model, so ``--max-hours`` and ``max_hours`` share their
        bounds. ``overrides`` are ``[run]`` keys (None means not given)."""
        rc = run_settings(loaded, overrides)
        return cls(
            scenario=loaded.config.scenario,
            cycles=rc.cycles,
            parallel=rc.parallel,
            retry_attempts=rc.retry_attempts,
            cycle_timeout=rc.cycle_timeout,
            max_hours=rc.max_hours,
            until=rc.until,
            seed=rc.seed if rc.seed is not None else new_seed(),
            night_dir=str(night_dir),
            retry_backoff=rc.retry_backoff,
            dry_run=dry_run,
            config_path=str(loaded.path) if loaded.path else None,
            key_prefix=loaded.key_prefix,
            config_raw=loaded.raw,
            faults=list(faults or []),
            choices=dict(choices or {}),
            pytest_args=list(pytest_args or []),
            executor=rc.executor,
            ray_address=rc.ray_address,
        )

    def to_json(self) -> str:
        # Unmasked: ops.create_night masks it (redact_data) at the door of the ledger.
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def load_config(self) -> LoadedConfig:
        """Re-validate the stored config (re-reading ${VAR}s from today's environment).

        The ledger keeps the config with literal secrets masked. If this plan has masked
        values, the secrets are read back from the config file, but only if the file is
        still the same config apart from them; otherwise resuming would run a different
        night, or send "***" as a password.
        """
        path = Path(self.config_path) if self.config_path else None
        raw = self.config_raw
        if MASK in json.dumps(raw):
            raw = self._unmasked_from_file(path)
        return validate_config(raw, path, self.key_prefix)

    def _unmasked_from_file(self, path: Path | None) -> dict[str, Any]:
        from ..config import load_raw

        hint = "keep secrets in ${VAR} references so a night can be resumed from the ledger alone"
        if path is None or not path.is_file():
            raise ConfigError(f"the night's config had literal secrets and {path} is gone; {hint}")
        current = load_raw(path)
        if not _same_but_masked(self.config_raw, current):
            raise ConfigError(f"{path}: changed since the night started (it holds literal secrets); {hint}")
        return current

    @property
    def cycles_to_run(self) -> int:
        return min(self.cycles, DRY_RUN_CYCLES) if self.dry_run else self.cycles

    def night_row(
        self, night_id: str, now: float, deadline: float | None, config_fp: str, protected_fp: str
    ) -> dict[str, Any]:
        """The ``nights`` row that opens a new night of this plan, started ``now``."""
        return {
            "id": night_id,
            "scenario": self.scenario,
            "started_at": now,
            "status": "running",
            "seed": self.seed,
            "planned_cycles": self.cycles_to_run,
            "parallel": self.parallel,
            "deadline": deadline,
            "plan": self.to_json(),
            "config_path": self.config_path,
            "config_fingerprint": config_fp,
            "protected_fingerprint": protected_fp,
            "night_dir": str(Path(self.night_dir)),
            "hostname": socket.gethostname(),
            "dry_run": self.dry_run,
        }


def _same_but_masked(stored: Any, current: Any) -> bool:
    """Equal, except where ``stored`` has a masked secret (which matches anything)."""
    if isinstance(stored, dict):
        return (
            isinstance(current, dict)
            and stored.keys() == current.keys()
            and all(_same_but_masked(stored[k], current[k]) for k in stored)
        )
    if isinstance(stored, list):
        return (
            isinstance(current, list)
            and len(stored) == len(current)
            and all(_same_but_masked(a, b) for a, b in zip(stored, current, strict=True))
        )
    if stored == MASK and isinstance(current, int | float) and not isinstance(current, bool):
        return True  # a number under a secret-looking key, masked whole (redact_data)
    if isinstance(stored, str) and MASK in stored and isinstance(current, str):
        pattern = ".+?".join(re.escape(part) for part in stored.split(MASK))
        return re.fullmatch(pattern, current, flags=re.DOTALL) is not None
    return bool(stored == current)


def run_settings(loaded: LoadedConfig | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """``[run]`` (or its defaults) with ``overrides`` over it, validated as one. A bad
    override is named as its flag (``--max-hours``), a bad config value by its key."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    base = loaded.config.run.model_dump() if loaded is not None else {}
    try:
        return RunConfig.model_validate({**base, **given})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        if key in given:
            _key, what = describe_validation_error(exc)
            raise UsageError(f"--{key.replace('_', '-')}: {what}") from None
        where = str(loaded.path) if loaded is not None and loaded.path else "<built-in>"
        prefix = f"{loaded.key_prefix if loaded else ''}run."
        raise ConfigError(format_validation_error(exc, where, prefix)) from None


def new_seed() -> int:
    return secrets.randbits(31)


def new_night_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now if now is not None else time.time()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def until_timestamp(start_ts: float, until: str) -> float:
    """The first local ``HH:MM`` strictly after ``start_ts`` (tomorrow if already past).

    Built with mktime so the local daylight-saving rules of that day apply.
    """
    hour, minute = (int(p) for p in until.split(":"))
    start = datetime.fromtimestamp(start_ts)
    for day_offset in (0, 1, 2):
        base = datetime.fromordinal(start.toordinal() + day_offset)
        ts = time.mktime((base.year, base.month, base.day, hour, minute, 0, 0, 0, -1))
        if ts > start_ts:
            return ts
    raise AssertionError("unreachable: a HH:MM always occurs within two days")


def compute_deadline(start_ts: float, max_hours: float | None, until: str | None) -> float | None:
    """When nothing new may start: whichever of the two bounds comes first."""
    candidates = []
    if max_hours:
        candidates.append(start_ts + max_hours * 3600.0)
    if until:
        candidates.append(until_timestamp(start_ts, until))
    return min(candidates) if candidates else None
