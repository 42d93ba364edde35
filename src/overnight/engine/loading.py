"""Loading a night: the scenario and its setup hook, the components, the fault plan.

Importing and building run before the night is opened, so whatever is wrong with the
config, the scenario or a component's options is a config error (exit 2) with nothing
written. Connecting the components and running the setup hook come once the night is
open, and are recorded; closing the components comes at its end.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..components import Component, ComponentSpec, OptionError, SandboxEndpoints, resolve_factory
from ..config import LoadedConfig
from ..errors import ConfigError
from ..redaction import redact
from ..verdicts import classify
from .context import NightContext
from .journal import TRACEBACK_MAX, EventKind, Journal

if TYPE_CHECKING:
    from ..faults.driver import FaultDriver
    from ..ledger import Ledger
    from .plan import Plan

log = logging.getLogger("overnight")

_CONNECT_TIMEOUT_S = 60.0
# At the end, closing is bounded, so a night always ends within seconds of being told to.
_CLOSE_TIMEOUT_S = 5.0


def config_where(loaded: LoadedConfig) -> str:
    """How messages name the config: its path, or ``<built-in>``."""
    return str(loaded.path) if loaded.path else "<built-in>"


def import_scenario(spec: str, base_dir: Path, where: str, key: str = "scenario") -> Callable[..., Any]:
    """Import ``module:function``, with the config's folder first on the import path."""
    module_name, _, func_name = spec.partition(":")
    folder = str(base_dir)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except SystemExit as exc:  # sys.exit() at import must not end the night silently
        raise ConfigError(
            f"{where}: {key}: module {module_name!r} called sys.exit({exc.code!r}) while being imported"
        ) from None
    except Exception as exc:  # the user's module may raise anything at import
        detail = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise ConfigError(f"{where}: {key}: cannot import module {module_name!r}: {detail}") from None
    fn: object = getattr(module, func_name, None)
    if fn is None:
        raise ConfigError(f"{where}: {key}: module {module_name!r} has no attribute {func_name!r}")
    if not callable(fn):
        raise ConfigError(f"{where}: {key}: {spec!r} is not a function")
    return fn


def imported_files(specs: list[str]) -> list[Path]:
    """The files of the modules ``module:function`` specs name, as ``import_scenario``
    imported them (nothing is imported again); a module without a file is left out."""
    out: list[Path] = []
    for spec in specs:
        module = sys.modules.get(spec.partition(":")[0])
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            out.append(Path(file))
    return out


async def git_commit(folder: Path) -> str | None:
    """The commit of the project under test (``<hash>`` or ``<hash>-dirty``), when its
    folder is in a git work tree and git is installed; None otherwise."""

    async def git(*args: str) -> str | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                "git", "-C", str(folder), *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return None
        try:
            async with asyncio.timeout(5):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()  # a hung git (a network mount?) must not outlive the check
            await proc.wait()
            return None
        return out.decode(errors="replace").strip() if proc.returncode == 0 else None

    head = await git("rev-parse", "HEAD")
    if not head:
        return None
    dirty = await git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if dirty else head


def scenario_shortcuts(
    scenario: Callable[..., Any], components: Mapping[str, Any], where: str
) -> dict[str, dict[str, str]]:
    """The scenario module's ``DEGRADING_SHORTCUTS``: per component name, the shortcut a
    careless script would take when it breaks and the harm it would do (both text)."""
    module = sys.modules.get(getattr(scenario, "__module__", "") or "")
    declared = getattr(module, "DEGRADING_SHORTCUTS", None)
    if declared is None:
        return {}
    name = f"{where}: scenario {getattr(module, '__name__', '?')}.DEGRADING_SHORTCUTS"
    if not isinstance(declared, Mapping):
        raise ConfigError(f"{name}: must be a dict of component name -> {{shortcut, harm}}")
    out: dict[str, dict[str, str]] = {}
    for comp, entry in declared.items():
        if (
            not isinstance(entry, Mapping)
            or set(entry) != {"shortcut", "harm"}
            or not all(isinstance(v, str) and v.strip() for v in entry.values())
        ):
            raise ConfigError(f"{name}[{comp!r}]: must be {{'shortcut': text, 'harm': text}}")
        if comp in components:  # a scenario shared by several configs may name more
            out[str(comp)] = {"shortcut": entry["shortcut"].strip(), "harm": entry["harm"].strip()}
    return out


def _shared_sandbox() -> SandboxEndpoints:
    # Imported on first use: a night without sandbox components never pays for it (0.13 s).
    from ..sandbox import shared_sandbox

    return shared_sandbox()


def build_components(
    loaded: LoadedConfig, night_dir: Path, sandbox: SandboxEndpoints | None = None
) -> dict[str, Component]:
    """Instantiate every ``[components.NAME]``. Bad options are config errors (exit 2).
    ``sandbox``: the endpoints of a sandbox already running (a worker's, the night's);
    by default this process's own, started on first use."""
    where = config_where(loaded)
    built: dict[str, Component] = {}
    folder = str(loaded.base_dir)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    for name, cc in loaded.config.components.items():
        key = f"{loaded.key_prefix}components.{name}"
        factory = resolve_factory(cc.type, f"{where}: {key}.type")
        spec = ComponentSpec(
            name=name,
            options=dict(cc.model_extra or {}),
            night_dir=night_dir,
            critical=cc.critical,
            base_dir=loaded.base_dir,
            sandbox=_shared_sandbox if sandbox is None else (lambda: sandbox),
        )
        try:
            built[name] = factory(spec)
        except OptionError as exc:  # it names components.NAME.KEY itself
            raise ConfigError(f"{where}: {loaded.key_prefix}{redact(str(exc))}") from None
        except SystemExit as exc:  # sys.exit("message") would print its message unredacted
            code = redact(str(exc.code)) if exc.code is not None else "None"
            raise ConfigError(f"{where}: {key}: the component's factory called sys.exit({code})") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {key}: {redact(str(exc))}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {key}: {redact(str(exc))}") from None
        except Exception as exc:  # a user's factory may raise anything; its message may hold a secret
            detail = redact(f"{type(exc).__name__}: {exc}".splitlines()[0].rstrip(": "))
            raise ConfigError(f"{where}: {key}: the component could not be built: {detail}") from None
    for comp in built.values():
        comp.peers = dict(built)
    return built


def check_agent_settings(loaded: LoadedConfig, components: Mapping[str, Component]) -> None:
    """Bad probe or repair settings of any component are exit 2, now."""
    if not loaded.config.agent.enabled:
        return
    from ..agent import MonitorSettings

    for comp in components.values():
        try:
            MonitorSettings.for_component(comp, loaded.config.agent)
        except ConfigError as exc:
            raise ConfigError(f"{config_where(loaded)}: {loaded.key_prefix}{exc}") from None


def build_fault_driver(
    plan: Plan,
    loaded: LoadedConfig,
    components: Mapping[str, Component],
    ledger: Ledger,
    night_id: str,
    night_path: Path,
    clock: Callable[[], float],
) -> FaultDriver:
    """Check the fault plan against the components now: a bad plan is exit 2, before
    anything is written (promise 8: targets at home only)."""
    from ..faults.driver import FaultDriver
    from ..faults.injectors import FaultsSettings, check
    from ..faults.plan import FaultSpec

    cfg = loaded.config.faults
    settings = FaultsSettings(tuple(cfg.allowed_hosts), cfg.allow_service_control, cfg.max_fill_gb)
    specs = [FaultSpec.from_dict(d) for d in plan.faults]
    for spec in specs:
        # Against the planned night (a --dry-run simply never reaches a late fault).
        if spec.cycle is not None and spec.cycle > plan.cycles:
            raise ConfigError(f"{spec.where}: cycle {spec.cycle} is beyond the night's {plan.cycles} cycles")
    try:
        mechanisms = check(specs, components, settings)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (components of {config_where(loaded)})") from None
    return FaultDriver(
        specs, mechanisms, components, ledger, night_id, night_path, plan.seed, settings, clock=clock
    )


async def connect_components(components: Mapping[str, Component], journal: Journal) -> None:
    """Bind every component to the journal and connect them all at once, each within its
    bound. A component that fails to connect is recorded, not fatal."""
    for comp in components.values():
        comp.bind(journal.recorder)

    async def one(name: str, comp: Component) -> None:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await comp.connect()
            # Declared after connecting: only then is the target known (a sandbox
            # component learns its URL on connect).
            await journal.event(EventKind.COMPONENT_DECLARED, comp.type_name, comp.describe(), component=name)
            await journal.event(EventKind.COMPONENT_CONNECTED, None, component=name)
        except Exception as exc:
            # Not fatal: cycles that use it will fail as infra errors, and say so.
            await journal.event(EventKind.COMPONENT_DECLARED, comp.type_name, comp.describe(), component=name)
            await journal.event(
                EventKind.COMPONENT_CONNECT_FAILED, f"{type(exc).__name__}: {exc}", component=name
            )
            log.warning("component %s failed to connect: %s", name, redact(str(exc)))

    await asyncio.gather(*(one(n, c) for n, c in components.items()))


async def close_components(components: Mapping[str, Component]) -> None:
    async def one(name: str, comp: Component) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await comp.close()
        except Exception as exc:
            log.warning("component %s failed to close: %s", name, redact(str(exc)) or type(exc).__name__)

    await asyncio.gather(*(one(n, c) for n, c in components.items()))


async def run_setup_hook(
    setup: Callable[..., Any], night: NightContext, timeout: float, journal: Journal
) -> str | None:
    """Run the setup hook within ``timeout``. None when it succeeded; otherwise what
    failed (recorded as ``setup_failed``). Whatever it raises is the hook's failure,
    never the night's end."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            result = setup(night)
            if inspect.isawaitable(result):
                await result
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # the hook's, never the night's end
        detail = f"{type(exc).__name__}: {redact(str(exc))}"
        tb = "".join(traceback.format_exception(exc))[-TRACEBACK_MAX:]
        await journal.event(EventKind.SETUP_FAILED, detail, {"traceback": tb, "verdict": classify(exc).value})
        log.error("setup failed: %s", detail)
        return detail
    await journal.event(EventKind.SETUP_DONE, None, {"duration_s": round(time.perf_counter() - t0, 4)})
    return None
