"""overnight's pytest plugin: each test's result streamed to the night, one JSON line each.

A pytest-suite night runs every cycle attempt as its own pytest process with this plugin
(``-p overnight_pytest``). The night hands it two pipes (``OVERNIGHT_PYTEST_FDS``:
``SESSION,RESULTS``):

- SESSION: one line of JSON from the night: the cycle's input, the declared components
  (their connection facts, for the ``overnight_components`` fixture, and their config, to
  classify an error), the explicit exception-to-component map, and the node ids not to run
  again (they have a final outcome from an earlier attempt of this cycle). The night keeps
  the pipe open while it lives: end of file means it is gone, and this process group kills
  itself, so no pytest outlives its night.
- RESULTS: one JSON object per line, as pytest's hooks report them (never parsed from
  pytest's output), keyed ``event``:

  - ``collected``: ``count`` (tests selected), ``deselected`` (by the night)
  - ``collect_error``: ``nodeid``, ``outcome`` (``failed`` or ``skipped``), ``message``,
    ``longrepr``: a file or folder pytest could not collect (or skipped whole)
  - ``start``: ``nodeid``: a test begins
  - ``test``: ``nodeid``; ``outcome`` as pytest names it (``passed``, ``failed`` (in its
    call), ``error`` (in setup or teardown), ``skipped``, ``xfailed``, ``xpassed``);
    ``when``, the phase that decided it; ``duration``, of all its phases, in seconds;
    ``message``, ``location`` and ``longrepr`` (the tail of pytest's own report) when it
    did not pass; and ``error``, the exception: ``type``, ``message``, ``assertion``
    (``AssertionError`` or ``pytest.fail``), ``timeout`` (``TimeoutError``), ``chain``
    (the module-qualified classes of each exception of its ``__cause__`` /
    ``__context__`` chain, most derived first) and ``infra`` (``component``, ``kind``,
    ``details``: the fault a declared component's own classifier diagnosed, or null)
  - ``session_finish``: ``exitstatus``

Messages are redacted by the night when they arrive, before anything records them.

An exception is tied to a component (``infra``) by a host and port in it that a declared
component has (an httpx request's URL, ``host='…', port=…``, ``('127.0.0.1', 5432)``,
``"127.0.0.1", port 5432``, ``scheme://host:port``), else by the config's
``[pytest.components]`` map (an exception module or class, any in the chain, to a
component), or by an ``overnight.InfraError`` the test raised itself; then that
component's classifier (the one its handle uses) names the fault kind, or says it is not a
dependency failure. Importing the components happens only then, once per process.

Outside a night (plain ``pytest -p overnight_pytest``) the fixtures work from the
environment (``OVERNIGHT_INPUT_SEED``, ``OVERNIGHT_CYCLE``, ``OVERNIGHT_ATTEMPT``) and
nothing is streamed.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import threading
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FDS_ENV = "OVERNIGHT_PYTEST_FDS"
LONGREPR_MAX = 4000  # characters of pytest's report of a failure kept (its tail)
MESSAGE_MAX = 1000
CHAIN_MAX = 8

# Hosts that all mean this machine, for matching an error's endpoint to a component's.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost", "0.0.0.0", "::"})

# Endpoints as client libraries write them into their messages.
_ENDPOINTS = (
    re.compile(r"host='(?P<host>[^']+)',\s*port=(?P<port>\d+)"),  # urllib3 / requests
    re.compile(r"\(\s*'(?P<host>[^']+)'\s*,\s*(?P<port>\d+)\s*[,)]"),  # asyncio, socket
    re.compile(r"\"(?P<host>[^\"]+)\"(?:\s*\([^)]*\))?,\s*port\s+(?P<port>\d+)"),  # libpq / psycopg
    re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/\s]*@)?(?P<host>\[[^\]]+\]|[^:/\s\"']+):(?P<port>\d+)"),
)

# Keys whose values the fixture's repr never shows.
_SECRET_KEY = re.compile(r"(?i)(^|_)(api_?key|password|passwd|secret|token|credentials)$")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]+@")


# -- what the tests get -------------------------------------------------------------------


@dataclass(frozen=True)
class CycleInput:
    """The cycle's deterministic input, as ``overnight.CycleInput`` (the same seed gives
    the same ``random()`` sequence and the same ``choice``)."""

    cycle: int
    seed: int

    def random(self) -> random.Random:
        return random.Random(self.seed)

    def choice(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.seed % len(options)]


class ComponentInfo(Mapping[str, Any]):
    """How a test reaches one declared component with its own client: ``info.url``,
    ``info["host"]``, ``info.port``… (what there is depends on the component's type). The
    values are usable (a database URL keeps its password); its repr masks secrets."""

    def __init__(self, name: str, facts: Mapping[str, Any]) -> None:
        self._facts = dict(facts)
        self._facts.setdefault("name", name)

    def __getitem__(self, key: str) -> Any:
        return self._facts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._facts)

    def __len__(self) -> int:
        return len(self._facts)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._facts[key]
        except KeyError:
            raise AttributeError(f"component {self._facts.get('name')!r} has no {key!r}") from None

    def __repr__(self) -> str:
        shown = {k: _masked(k, v) for k, v in self._facts.items()}
        return f"ComponentInfo({shown!r})"

    __str__ = __repr__


def _masked(key: str, value: Any) -> Any:
    if value is None:
        return None
    if _SECRET_KEY.search(key):
        return "***"
    return _URL_PASSWORD.sub(r"\1***@", value) if isinstance(value, str) else value


@pytest.fixture(scope="session")
def overnight_input(pytestconfig: pytest.Config) -> CycleInput:
    """The cycle's deterministic input: ``.seed``, ``.cycle``, ``.random()``, ``.choice()``."""
    session = _session(pytestconfig)
    return CycleInput(cycle=session.cycle, seed=session.seed)


@pytest.fixture(scope="session")
def overnight_attempt(pytestconfig: pytest.Config) -> int:
    """The attempt number of the cycle: 1, then 2… when tests are run again after an
    infrastructure error or a timeout."""
    return _session(pytestconfig).attempt


@pytest.fixture(scope="session")
def overnight_components(pytestconfig: pytest.Config) -> Mapping[str, ComponentInfo]:
    """The night's declared components, by name: how to reach each one."""
    return _session(pytestconfig).components


# -- the session the night gave ---------------------------------------------------------


class Session:
    def __init__(self, data: Mapping[str, Any], results_fd: int | None) -> None:
        env = os.environ
        self.cycle = int(data.get("cycle") or env.get("OVERNIGHT_CYCLE") or 0)
        self.attempt = int(data.get("attempt") or env.get("OVERNIGHT_ATTEMPT") or 1)
        self.seed = int(data.get("input_seed") or env.get("OVERNIGHT_INPUT_SEED") or 0)
        declared: Mapping[str, Any] = data.get("components") or {}
        self.declared = declared
        self.components = {
            name: ComponentInfo(name, spec.get("facts") or {}) for name, spec in declared.items()
        }
        self.mapping: dict[str, str] = dict(data.get("map") or {})
        self.deselect: set[str] = set(data.get("deselect") or ())
        self.base_dir = data.get("base_dir")
        self.night_dir = data.get("night_dir")
        self.results_fd = results_fd
        self._classifiers: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], dict[str, Any]] = {}
        self._phases: dict[str, list[dict[str, Any]]] = {}

    # -- sending --

    def send(self, event: str, **fields: Any) -> None:
        if self.results_fd is None:
            return
        line = json.dumps({"event": event, **fields}, default=str).encode("utf-8", "replace") + b"\n"
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self.results_fd, view) :]
        except OSError:
            # The night is gone (its end of the pipe closed): nothing may run unrecorded.
            os._exit(75)

    # -- hooks --

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not self.deselect:
            return
        kept = [item for item in items if item.nodeid not in self.deselect]
        dropped = [item for item in items if item.nodeid in self.deselect]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed or (report.skipped and report.nodeid):
            message, _location = _crash(report)
            self.send(
                "collect_error",
                nodeid=report.nodeid,
                outcome=report.outcome,
                message=message or _skip_reason(report) or "collection failed",
                longrepr=_tail(str(report.longrepr)),
            )

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.send("collected", count=len(session.items), deselected=len(self.deselect))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self._phases[nodeid] = []
        self.send("start", nodeid=nodeid)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        # Only here is the exception itself at hand (the report keeps its text).
        if call.excinfo is not None and report.failed:
            self._errors[(item.nodeid, call.when)] = self._describe(call.excinfo.value)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        message, location = _crash(report) if report.failed else (None, None)
        self._phases.setdefault(report.nodeid, []).append(
            {
                "when": report.when,
                "outcome": report.outcome,
                "duration": report.duration,
                "wasxfail": hasattr(report, "wasxfail"),
                "message": message or (_skip_reason(report) if report.skipped else None),
                "location": location,
                "longrepr": _tail(str(report.longrepr)) if report.failed else None,
            }
        )

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        phases = self._phases.pop(nodeid, [])
        decisive = next((p for p in phases if p["outcome"] == "failed"), None) or next(
            (p for p in phases if p["outcome"] == "skipped"), None
        )
        xfail = any(p["wasxfail"] for p in phases)
        if decisive is None:
            outcome, when = ("xpassed" if xfail else "passed"), "call"
        elif decisive["outcome"] == "skipped":
            outcome, when = ("xfailed" if decisive["wasxfail"] else "skipped"), decisive["when"]
        else:
            when = decisive["when"]
            outcome = "failed" if when == "call" else "error"
        error = self._errors.pop((nodeid, when), None) if decisive is not None else None
        for key in [k for k in self._errors if k[0] == nodeid]:
            del self._errors[key]
        self.send(
            "test",
            nodeid=nodeid,
            outcome=outcome,
            when=when,
            duration=sum(p["duration"] or 0.0 for p in phases),
            message=decisive["message"] if decisive else None,
            location=decisive["location"] if decisive else None,
            longrepr=decisive["longrepr"] if decisive else None,
            error=error,
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.send("session_finish", exitstatus=int(exitstatus))

    # -- what an exception was --

    def _describe(self, exc: BaseException) -> dict[str, Any]:
        chain = _chain(exc)
        assertion = isinstance(exc, AssertionError | pytest.fail.Exception)
        infra = None if assertion else self._infra(chain)
        return {
            "type": _type_name(exc),
            "message": _first_lines(exc),
            "assertion": assertion,
            "timeout": isinstance(exc, TimeoutError),
            "chain": [_classes(e) for e in chain],
            "infra": infra,
        }

    def _infra(self, chain: list[BaseException]) -> dict[str, Any] | None:
        for e in chain:  # the test raised overnight.InfraError itself: it said which
            if "overnight.errors.InfraError" in _classes(e):
                return {"component": str(getattr(e, "component", "")), "kind": str(getattr(e, "kind", ""))}
        name = self._component_of(chain)
        if name is None:
            return None
        classifier = self._classifier(name)
        for e in chain:
            try:
                kind = classifier.classify(e)
            except Exception:  # a custom classifier's bug: not a diagnosis
                kind = None
            if kind:
                try:
                    details = dict(classifier.fault_details(e) or {})
                except Exception:
                    details = {}
                return {"component": name, "kind": str(kind), "details": details}
        return None

    def _component_of(self, chain: list[BaseException]) -> str | None:
        """The declared component an error came from: by endpoint, else by the map."""
        endpoints = [ep for e in chain for ep in _endpoints(e)]
        for host, port in endpoints:
            for name, info in self.components.items():
                if info.get("port") is not None and _same_endpoint(
                    host, port, info.get("host"), info["port"]
                ):
                    return name
        for e in chain:
            for cls in _classes(e):
                for key, name in self.mapping.items():
                    module = cls.rpartition(".")[0]
                    if (
                        cls == key
                        or module == key
                        or cls.startswith(key + ".")
                        or module.startswith(key + ".")
                    ):
                        return name
        return None

    def _classifier(self, name: str) -> Any:
        """The component's own classifier: the component built (never connected) in this
        process from its config; ``classify_common`` if it cannot be."""
        if name in self._classifiers:
            return self._classifiers[name]
        from overnight.components import ComponentSpec, classify_common, fault_details_common
        from overnight.components.registry import resolve_factory

        class Common:
            @staticmethod
            def classify(exc: BaseException) -> str | None:
                return classify_common(exc)

            @staticmethod
            def fault_details(exc: BaseException) -> dict[str, Any]:
                return fault_details_common(exc)

        built: Any = Common()
        spec = self.declared.get(name)
        if spec is not None:
            if self.base_dir and self.base_dir not in sys.path:
                sys.path.insert(0, self.base_dir)
            try:
                factory = resolve_factory(str(spec.get("type")), f"components.{name}.type")
                built = factory(
                    ComponentSpec(
                        name=name,
                        options=dict(spec.get("options") or {}),
                        night_dir=Path(self.night_dir or "."),
                        critical=bool(spec.get("critical", True)),
                        base_dir=Path(self.base_dir) if self.base_dir else None,
                    )
                )
            except Exception:  # a type registered in code this process did not import
                built = Common()
        self._classifiers[name] = built
        return built


def _session(config: pytest.Config) -> Session:
    found = config.pluginmanager.get_plugin("overnight-session")
    if isinstance(found, Session):
        return found
    session = Session({}, None)
    config.pluginmanager.register(session, "overnight-session")
    return session


def pytest_configure(config: pytest.Config) -> None:
    fds = os.environ.get(FDS_ENV)
    if not fds or config.pluginmanager.get_plugin("overnight-session") is not None:
        return
    session_fd, results_fd = (int(x) for x in fds.split(","))
    del os.environ[FDS_ENV]  # the pipes are this process's: not for a pytest the tests start
    for fd in (session_fd, results_fd):
        os.set_inheritable(fd, False)  # not for the tests' own subprocesses
    data = _read_line(session_fd)
    config.pluginmanager.register(Session(data, results_fd), "overnight-session")
    threading.Thread(target=_watch_night, args=(session_fd,), name="overnight-watch", daemon=True).start()


def _read_line(fd: int) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0]
    data = json.loads(line) if line.strip() else {}
    return data if isinstance(data, dict) else {}


def _watch_night(fd: int) -> None:
    """Block on the night's end of the session pipe; its end of file means the night is
    gone (killed, crashed): end this process group at once."""
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(75)


# -- helpers ----------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(out) < CHAIN_MAX and all(seen is not e for e in out):
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def _classes(exc: BaseException) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__ if c not in (object, BaseException)]


def _type_name(exc: BaseException) -> str:
    t = type(exc)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _first_lines(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, pytest.fail.Exception):
        text = str(getattr(exc, "msg", text))
    return "\n".join(text.splitlines()[:3])[:MESSAGE_MAX]


def _tail(text: str) -> str:
    return text[-LONGREPR_MAX:]


def _crash(report: pytest.TestReport | pytest.CollectReport) -> tuple[str | None, str | None]:
    """pytest's own one-line summary of a failure and where it happened (what its junitxml
    writes as a failure's message)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is None:
        text = str(report.longrepr).strip() if report.longrepr else ""
        return (text.splitlines()[-1][:MESSAGE_MAX] if text else None), None
    # Where in the test (its own frame: the first of the traceback pytest kept), not
    # where deep in a library the error was raised.
    entries = getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", None) or []
    where = getattr(entries[0], "reprfileloc", None) if entries else None
    where = where or crash
    return str(crash.message)[:MESSAGE_MAX], f"{where.path}:{where.lineno}"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])[:MESSAGE_MAX]
    wasxfail = getattr(report, "wasxfail", None)
    return f"xfail: {wasxfail}" if wasxfail else None


def _endpoints(exc: BaseException) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    try:
        url = exc.request.url  # type: ignore[attr-defined]  # httpx (and the SDKs on it): the request's URL
    except Exception:
        url = None
    if url is not None:
        host, port = getattr(url, "host", None), getattr(url, "port", None)
        scheme = getattr(url, "scheme", "")
        if host:
            found.append((str(host), int(port) if port else (443 if scheme == "https" else 80)))
    text = " ".join(str(a) for a in exc.args) if exc.args else str(exc)
    for pattern in _ENDPOINTS:
        for m in pattern.finditer(text):
            found.append((m.group("host").strip("[]"), int(m.group("port"))))
    return found


def _same_endpoint(host: str, port: int, their_host: Any, their_port: Any) -> bool:
    try:
        if int(their_port) != int(port):
            return False
    except (TypeError, ValueError):
        return False
    a, b = host.lower().strip("[]"), str(their_host or "").lower().strip("[]")
    return a == b or (a in _LOOPBACK and b in _LOOPBACK)
