"""Capabilities and user-registered fault injectors.

A repair applies to a component because of what it has (``PoolRebuildable``, …), not
its type name; a user's own component type gets real faults through a user's own
injector (``register_injector``), asked before the built-in ones, with no change to
overnight. The night here is real: a user's file-backed dependency is taken away by the
user's injector, the agent's probe finds it missing, the fault is undone and the probe
verifies it back."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from overnight.agent.strategies import RebuildPool, RepairContext, RestartCommand
from overnight.components import (
    Component,
    ComponentSpec,
    NonEmptyStr,
    Options,
    PoolRebuildable,
    ProbeResult,
    describe_error,
    register_component_type,
)
from overnight.components import registry as component_registry
from overnight.errors import ConfigError
from overnight.faults import (
    FaultsSettings,
    InjectEnv,
    Injector,
    collect,
    fault_timeline,
    register_injector,
    registered_injectors,
)
from overnight.faults import injectors as injector_registry
from overnight.faults.injectors import check, choose
from overnight.faults.timeline import event_data
from overnight.ledger import queries

from .helpers import FAST_AGENT, attempts_by_cycle, run_night

# -- a user's own dependency and the injector that breaks it -------------------------------


class SpoolOptions(Options):
    path: NonEmptyStr


class Spool(Component):
    """An append-only spool file the scenario writes to: a missing file is the
    dependency being unavailable (it is never created behind the scenario's back)."""

    type_name = "spool"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        self.path = spec.resolve(self.options(SpoolOptions).path)

    @property
    def target(self) -> str:
        return str(self.path)

    def classify(self, exc: BaseException) -> str | None:
        if isinstance(exc, FileNotFoundError):
            return "unavailable"
        return super().classify(exc)

    def _append(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)  # no O_CREAT
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    async def append(self, line: str) -> None:
        await self.call("append", asyncio.to_thread, self._append, line)

    async def probe(self) -> ProbeResult:
        t0 = time.perf_counter()
        try:
            fd = await asyncio.to_thread(os.open, self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            kind = self.classify(exc) or "unavailable"
            return ProbeResult(False, time.perf_counter() - t0, kind, f"spool probe: {describe_error(exc)}")
        os.close(fd)
        return ProbeResult(True, time.perf_counter() - t0, None, "spool probe: writable")


def _aside(path: Path) -> Path:
    return path.with_name(path.name + ".unplugged")


class Unplug(Injector):
    """Take the spool file away (renamed aside); put it back on undo or at resume."""

    mechanism = "spool_unplug"
    types = ("spool",)
    kinds = ("unavailable",)
    methods = ("unplug",)
    networked = False  # a local file: no server to keep at home

    def __init__(self, spec: Any, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        assert isinstance(comp, Spool)
        self.path = comp.path

    async def inject(self) -> dict[str, Any]:
        await asyncio.to_thread(os.rename, self.path, _aside(self.path))
        return {"moved_aside": _aside(self.path).name}

    async def undo(self) -> dict[str, Any]:
        return {"restored": await asyncio.to_thread(self._put_back, self.path)}

    @staticmethod
    def _put_back(path: Path) -> bool:
        if not _aside(path).exists():
            return False
        os.rename(_aside(path), path)
        return True

    @classmethod
    async def recover(cls, record: Mapping[str, Any], comp: Component | None, env: InjectEnv) -> str:
        assert isinstance(comp, Spool)
        return "put back" if cls._put_back(comp.path) else "nothing was aside"


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The component-type and injector registries as they were, after the test."""
    monkeypatch.setattr(component_registry, "_REGISTRY", dict(component_registry._REGISTRY))
    monkeypatch.setattr(injector_registry, "_REGISTRY", dict(injector_registry._REGISTRY))


def _spec(text: str) -> Any:
    (spec,) = collect([], [text])
    return spec


# -- the night -------------------------------------------------------------------------------


async def test_a_users_injector_breaks_a_users_component_in_a_real_night(
    tmp_path: Path, registries: None
) -> None:
    register_component_type("spool", Spool)
    register_injector(Unplug)
    spool = tmp_path / "project" / "spool.log"
    spool.parent.mkdir(parents=True)
    spool.write_text("")
    code = """
    async def cycle(ctx):
        async with ctx.step("write"):
            await ctx.components["spool"].append("cycle")
    """
    config = FAST_AGENT + '[components.spool]\ntype = "spool"\npath = "spool.log"\n'
    faults = [s.to_dict() for s in collect([], ["spool:unavailable@cycle=2,duration=1s"])]
    outcome, report, ledger = await run_night(
        tmp_path, code, config, cycles=3, retry_attempts=2, faults=faults
    )
    try:
        with ledger.read() as conn:
            timeline = fault_timeline(conn, outcome.night_id)
            rows = queries.read_night(conn, outcome.night_id)
            injected = queries.events_of(conn, outcome.night_id, kinds=("fault_injected",))
        atts = attempts_by_cycle(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert rows is not None

    # Injected by the user's injector, chosen without naming it (its kind, its type).
    (row,) = timeline["injections"]
    assert row["mechanism"] == "spool_unplug" and row["cycles_hit"] == [2], row
    assert event_data(injected[0]["data"])["detail"] == {"moved_aside": "spool.log.unplugged"}
    # Detected and diagnosed as injected; the agent's probe found the file gone ...
    assert row["detected"] and row["diagnosis_correct"] and row["diagnosed_kind"] == "unavailable", row
    failed = [p for p in rows.probes if p["component"] == "spool" and not p["healthy"]]
    assert failed and all(row["injected_at"] <= p["ts"] <= row["cleared_at"] + 1 for p in failed)
    assert failed[0]["fault_kind"] == "unavailable"
    assert failed[0]["detail"].startswith("spool probe: FileNotFoundError"), failed[0]
    (incident,) = rows.incidents
    assert incident["detail"].startswith("spool probe: FileNotFoundError"), incident
    # ... undone when its duration was up, and verified back by a healthy probe after that.
    assert row["clear_reason"] == "duration elapsed" and row["verified_at"] is not None, row
    assert row["verified_at"] >= row["cleared_at"]
    assert any(p["healthy"] and p["ts"] >= row["cleared_at"] for p in rows.probes)
    assert spool.exists() and not _aside(spool).exists()
    # The cycle it hit was retried on the restored spool; nothing else was touched.
    assert [a["verdict"] for a in atts[2]] == ["infra_error", "passed"], atts[2]
    assert report["totals"]["passed"] == 3 and outcome.status == "completed"
    assert spool.read_text() == "cycle\n" * 3


# -- choosing -------------------------------------------------------------------------------


def test_user_injectors_are_asked_first_and_say_why_not(tmp_path: Path, registries: None) -> None:
    from overnight.components.registry import resolve_factory

    register_component_type("spool", Spool)
    assert register_injector(Unplug) is Unplug
    assert registered_injectors()[0] is Unplug
    (tmp_path / "s.log").write_text("")
    spool = Spool(ComponentSpec("spool", {"path": str(tmp_path / "s.log")}, tmp_path))
    settings = FaultsSettings()

    assert choose(_spec("spool:unavailable@cycle=1,duration=1s"), spool, settings) == "spool_unplug"
    assert choose(_spec("spool:unavailable@cycle=1,method=unplug,duration=1s"), spool, settings) == (
        "spool_unplug"
    )
    # Named by its method, a kind it does not make: its own refusal.
    with pytest.raises(ValueError, match=r"^spool_unplug makes unavailable, not timeout$"):
        choose(_spec("spool:timeout@cycle=1,method=unplug,duration=1s"), spool, settings)
    # Neither named nor its kind: the injectors after it are asked, and none serves a spool;
    # the answer says what would make one (the fault proxy's hooks).
    with pytest.raises(
        ValueError,
        match=r"^no injector makes timeout for spool \(spool\): the component has no tcp_endpoint\(\) and route_via\(\)",
    ):
        choose(_spec("spool:timeout@cycle=1,duration=1s"), spool, settings)
    # ... except the TCP proxy, for any component put behind it.
    proxied = Spool(ComponentSpec("spool", {"path": "s.log", "fault_proxy": True}, tmp_path))
    assert choose(_spec("spool:timeout@cycle=1,duration=1s"), proxied, settings) == "tcp_proxy"
    assert check([_spec("spool:unavailable@cycle=1,duration=1s")], {"spool": spool}, settings) == {
        "spool:unavailable#1": "spool_unplug"
    }

    # Asked first, a user's injector may take a built-in type's fault the built-ins refuse.
    llm = resolve_factory("llm", "test")(ComponentSpec("llm", {"sandbox": True}, tmp_path))
    bad = _spec("llm:bad_response@cycle=1,method=garble,duration=1s")
    with pytest.raises(ValueError, match=r"^an HTTP API gets .*, not bad_response$"):
        choose(bad, llm, settings)

    class Garble(Injector):
        mechanism = "garble"
        types = ("llm",)
        kinds = ("bad_response",)
        methods = ("garble",)
        networked = False

        async def inject(self) -> dict[str, Any]:
            return {}

    register_injector(Garble)
    assert choose(bad, llm, settings) == "garble"
    assert choose(_spec("llm:bad_response@cycle=1,duration=1s"), llm, settings) == "garble"  # its kind
    # The built-in answers for what it does not claim stay as they were.
    assert choose(_spec("llm:rate_limited@cycle=1"), llm, settings) == "sandbox_switch"
    with pytest.raises(ValueError, match=r"^an HTTP API gets .*, not connection_lost$"):
        choose(_spec("llm:connection_lost@cycle=1"), llm, settings)


def test_a_users_injector_is_networked_unless_it_says_not(tmp_path: Path, registries: None) -> None:
    # The safe default: an injector breaks a connection, so promise 8 wants to know where to.
    class Unplugged(Unplug):
        mechanism = "spool_unplug_networked"
        networked = True

    register_injector(Unplugged)
    (tmp_path / "s.log").write_text("")
    spool = Spool(ComponentSpec("spool", {"path": "s.log"}, tmp_path))
    with pytest.raises(ConfigError, match=re.escape("spool: cannot tell where it connects (it has no url")):
        check([_spec("spool:unavailable@cycle=1,duration=1s")], {"spool": spool}, FaultsSettings())


def test_register_injector_refuses_what_choose_could_not_use(registries: None) -> None:
    async def inject(self: Injector) -> dict[str, Any]:
        return {}

    def injector(**attrs: Any) -> type[Injector]:
        body = {"mechanism": "mine", "kinds": ("timeout",), "types": ("x",), "inject": inject, **attrs}
        return type("Mine", (Injector,), body)

    with pytest.raises(TypeError, match="not a subclass"):
        register_injector(object)  # what a careless caller might pass
    with pytest.raises(ValueError, match="'tcp_proxy' is a built-in injector's name"):
        register_injector(injector(mechanism="tcp_proxy"))
    with pytest.raises(ValueError, match="mechanism name of its own"):
        register_injector(injector(mechanism="injector"))
    with pytest.raises(ValueError, match="which fault kinds"):
        register_injector(injector(kinds=()))
    with pytest.raises(ValueError, match="which components it serves"):
        register_injector(injector(types=()))
    with pytest.raises(ValueError, match=r"define inject\(\)"):
        register_injector(injector(inject=Injector.inject))
    assert [i.mechanism for i in registered_injectors()] == [
        "tcp_proxy",
        "http_proxy",
        "sandbox_switch",
        "http_layer",
        "postgresql",
        "qdrant_local",
        "disk_fill",
    ]
    # Registered again under the same name: replaced where it was.
    first, second = injector(), injector(kinds=("unavailable",))
    register_injector(first)
    register_injector(second)
    assert registered_injectors()[0] is second and len(registered_injectors()) == 8


# -- repairs ----------------------------------------------------------------------------------


class Pooled(Component):
    type_name = "pooled"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        self.rebuilt = 0
        self.restart_command: str | None = None

    async def rebuild_pool(self) -> None:
        self.rebuilt += 1


async def test_repairs_apply_by_what_a_component_has(tmp_path: Path) -> None:
    def ctx(comp: Component) -> RepairContext:
        return RepairContext(comp, 1, "unavailable", {}, None, tmp_path, "n")  # these repairs use no guard

    pooled = Pooled(ComponentSpec("p", {}, tmp_path))
    plain = Component(ComponentSpec("c", {}, tmp_path))
    assert isinstance(pooled, PoolRebuildable) and not isinstance(plain, PoolRebuildable)
    assert RebuildPool().applicable(ctx(pooled)) and not RebuildPool().applicable(ctx(plain))
    assert await RebuildPool().run(ctx(pooled)) and pooled.rebuilt == 1
    # restart_command applies only when one is configured; it rebuilds the pool it has.
    assert not RestartCommand().applicable(ctx(pooled)) and not RestartCommand().applicable(ctx(plain))
    pooled.restart_command = "true"
    assert RestartCommand().applicable(ctx(pooled))
    assert await RestartCommand().run(ctx(pooled)) == "ran restart command (true…) and rebuilt the pool"
    assert pooled.rebuilt == 2
