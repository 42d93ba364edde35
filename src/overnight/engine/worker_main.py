"""A worker: runs the night's attempts in a process of its own (``executor = "process"``,
or inside a Ray actor), one at a time, as the night's process asks.

It builds and connects its own components from the night's config, and sends back over
its one authenticated connection, in order: every record of an attempt (steps,
artifacts, metrics, component events: the night's process writes them to the ledger),
every classified fault at once (the repair agent's signal), its log lines, and the
attempt's outcome. Before each attempt it takes the night's component state: knob
values, fallbacks, and the client repairs the agent made (a rebuilt pool, a reconnect, a
refreshed token), which it repeats on its own clients. When the night's process goes
away, so does the worker: nothing it did after that could be recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from ..components import Component
from ..config import LoadedConfig, ProtectedSettings
from ..redaction import redact, register_secret
from ..verdicts import Verdict
from .executors import AttemptEnv, AttemptOutcome, AttemptRequest, LocalCanceller, execute_attempt
from .journal import TRACEBACK_MAX, EventKind, Journal
from .loading import build_components, config_where, import_scenario

KEY_ENV = "OVERNIGHT_WORKER_KEY"  # the connection's key: in the environment, never in argv
CONNECT_S = 60.0  # a component's connect in a worker
REPAIR_S = 120.0  # one repeated client repair in a worker


@dataclass
class WorkerSpec:
    """What a worker needs to run the night's attempts (sent once it has connected)."""

    loaded: LoadedConfig
    scenario: str
    night_id: str
    night_path: str
    night_dir: str
    seed: int
    cycle_timeout: float
    sandbox: Any = None  # the night's sandbox endpoints (``sandbox.SandboxView``), if any
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)  # fault proxies
    log_level: int = logging.INFO
    # The night's registered secrets: the worker masks them as the night does (its own
    # environment may not hold them: a Ray node's). Never logged, never written.
    secrets: list[str] = field(default_factory=list, repr=False)


class Channel:
    """The worker's side of its connection: sends from the loop and from scenario
    threads, one whole message at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._lock:
                self.conn.send(message)
        except (OSError, EOFError, ValueError):
            # The night's process is gone: nothing more can be recorded; leave now.
            os._exit(3)


class RemoteLedger:
    """The ledger as an attempt in a worker sees it: records go, in order, to the night's
    process, which writes them with its own (FIFO) writer before the attempt's end."""

    # The records an attempt makes (``CycleContext``, a component's recorder).
    ALLOWED = frozenset({"step_started", "step_finished", "artifact_saved", "add_event"})

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def submit(self, op: Any, *args: Any) -> concurrent.futures.Future[Any]:
        self.channel.send(("op", op.__name__, args))
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(None)
        return done

    async def write(self, op: Any, *args: Any) -> Any:
        self.submit(op, *args)

    def write_sync(self, op: Any, *args: Any) -> Any:
        self.submit(op, *args)


class _Forward(logging.Handler):
    """The worker's log lines go to the night's log (redacted there, as every line is)."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.channel.send(("log", record.levelno, record.name, record.getMessage()))


def no_delay(conn: Connection) -> None:
    """Send each message at once: a message is two writes (length, then body), and with
    Nagle's algorithm against delayed ACKs every round trip would wait ~40 ms."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        finally:
            sock.close()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the night's process dies, even by kill -9."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> None:
    """``python -c "…main()" HOST PORT SLOT OUTPUT``, started by the night."""
    _die_with_parent()
    parent = os.getppid()
    host, port, slot, output = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    key = bytes.fromhex(os.environ.pop(KEY_ENV, ""))
    if os.getppid() != parent:
        os._exit(3)
    serve((host, port), key, slot, None, output)
    os._exit(0)


def crash_file(output: str | Path) -> Path:
    """Where a worker's faulthandler writes a native crash's stacks (names and line
    numbers only: no values, so nothing to redact), beside its output."""
    return Path(output).with_suffix(".crash")


def _capture_output(output: str) -> None:
    """This worker's stdout and stderr, redacted line by line, appended to ``output``; a
    native crash's stacks straight to its crash file (a thread cannot write them after a
    segfault)."""
    crash = open(crash_file(output), "w")  # noqa: SIM115 — kept open for faulthandler until exit
    faulthandler.enable(file=crash, all_threads=True)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with open(read_fd, "rb", buffering=0) as pipe, open(output, "ab", buffering=0) as out:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = redact(line.decode("utf-8", errors="replace")) or ""
                    out.write(text.encode() + b"\n")
            if pending:
                out.write((redact(pending.decode("utf-8", errors="replace")) or "").encode())

    threading.Thread(target=pump, name="worker-output", daemon=True).start()


def serve(
    address: tuple[str, int], key: bytes, slot: int, node: str | None = None, output: str | None = None
) -> None:
    """Connect to the night's process and run its attempts until it says stop or goes away.
    ``output``: the file for this worker's stdout and stderr (redacted) and, beside it,
    its crash file: where the night reads the tail of a crash."""
    if output is not None:
        _capture_output(output)
    # Ctrl-C on a terminal is the night's to handle: it cancels the attempt through us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Client(address, authkey=key)
    no_delay(conn)
    conn.send(("hello", slot, os.getpid(), socket.gethostname(), node))
    spec: WorkerSpec = conn.recv()
    for secret in spec.secrets:
        register_secret(secret)
    from .runner import run_loop

    run_loop(_work(conn, spec))


async def _work(conn: Connection, spec: WorkerSpec) -> None:
    loop = asyncio.get_running_loop()
    channel = Channel(conn)
    ledger = RemoteLedger(channel)
    journal = Journal(ledger, spec.night_id, time.time)  # type: ignore[arg-type]
    root = logging.getLogger("overnight")
    root.setLevel(spec.log_level)
    root.addHandler(_Forward(channel))
    loaded = spec.loaded
    where = config_where(loaded)
    try:
        components = build_components(loaded, Path(spec.night_dir), sandbox=spec.sandbox)
        for name, comp in components.items():
            comp.bind(journal.recorder)
            comp.on_error(
                lambda c, kind, exc: channel.send(("signal", c.name, kind, c.details_of(exc), time.time()))
            )
            if name in spec.routes:
                comp.route_via(*spec.routes[name])
        await _connect(components)
        scenario = import_scenario(spec.scenario, loaded.base_dir, where)
    except BaseException as exc:
        channel.send(("start_failed", redact(f"{type(exc).__name__}: {exc}".splitlines()[0])))
        return

    def refused(key: str, value: Any) -> None:
        journal.submit(
            EventKind.DEGRADATION_BLOCKED,
            f"a worker's cycle tried to set {key} = {value!r}: refused ({key} is a protected setting)",
            {"by": "a worker's cycle", "attempted": f"set {key} = {value!r}", "reason": "protected setting"},
        )

    env = AttemptEnv(
        night_id=spec.night_id,
        night_path=Path(spec.night_path),
        seed=spec.seed,
        scenario=scenario,
        settings=ProtectedSettings(loaded.config.settings, on_write=refused),
        handles={n: c.handle for n, c in components.items()},
        ledger=ledger,
        cycle_timeout=spec.cycle_timeout,
    )
    canceller = LocalCanceller()
    requests: asyncio.Queue[tuple[AttemptRequest, dict[str, Any]] | None] = asyncio.Queue()
    repaired: dict[str, int] = {}

    def on_command() -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "attempt":
                    canceller.reset()  # a cancel that follows it (in order) still holds
                    requests.put_nowait((message[1], message[2]))
                elif message[0] == "cancel":
                    canceller.interrupt()
                elif message[0] == "stop":
                    requests.put_nowait(None)
        except (EOFError, OSError):
            os._exit(3)  # the night's process is gone

    loop.add_reader(conn.fileno(), on_command)
    channel.send(("ready",))
    try:
        while (item := await requests.get()) is not None:
            request, state = item
            await _sync(components, state, repaired, journal)
            try:
                outcome = await execute_attempt(env, request, canceller)
            except BaseException as exc:
                outcome = AttemptOutcome(
                    Verdict.HARNESS_ERROR,
                    0.0,
                    error={
                        "error_type": type(exc).__name__,
                        "error_message": redact(f"the worker failed: {exc}") or "the worker failed",
                        "traceback": "".join(traceback.format_exception(exc))[-TRACEBACK_MAX:],
                    },
                )
            channel.send(("done", outcome))
    finally:
        loop.remove_reader(conn.fileno())
        for comp in components.values():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await comp.close()


async def _connect(components: Mapping[str, Component]) -> None:
    async def one(name: str, comp: Component) -> None:
        try:
            async with asyncio.timeout(CONNECT_S):
                await comp.connect()
        except Exception as exc:  # as in the night's process: its calls will say so
            logging.getLogger("overnight").warning(
                "worker %d: component %s failed to connect: %s", os.getpid(), name, redact(str(exc))
            )

    await asyncio.gather(*(one(n, c) for n, c in components.items()))


async def _sync(
    components: Mapping[str, Component], state: dict[str, Any], repaired: dict[str, int], journal: Journal
) -> None:
    """Take the night's component state before an attempt: its knob values and
    fallbacks, and repeat the client repairs this worker has not made yet."""
    log = logging.getLogger("overnight")
    for name, st in state.items():
        comp = components.get(name)
        if comp is None:
            continue
        for knob, value in st["knobs"].items():
            if knob in comp.knobs and comp.knobs.get(knob) != value:
                comp.knobs.set(knob, value)
        if st["fallback"] is not None and hasattr(comp, "fallback_active"):
            comp.fallback_active = st["fallback"]
        actions: list[str] = st["repairs"]
        for action in actions[repaired.get(name, 0) :]:
            pid = os.getpid()
            try:
                async with asyncio.timeout(REPAIR_S):
                    await getattr(comp, action)()
            except Exception as exc:  # the next call fails, is classified and signalled
                log.warning("worker %d: %s.%s() failed: %s", pid, name, action, redact(str(exc)))
                outcome = f"failed: {type(exc).__name__}"
            else:
                outcome = "done"
            journal.submit(
                "client_repair_repeated",
                f"worker {pid}: {name}.{action}() {outcome}",
                {"action": action, "worker_pid": pid, "outcome": outcome},
                component=name,
            )
        repaired[name] = len(actions)


def component_state(components: Mapping[str, Component]) -> dict[str, Any]:
    """What a worker takes from the night's components before each attempt."""
    return {
        name: {
            "knobs": comp.knobs.values(),
            "fallback": getattr(comp, "fallback_active", None),
            "repairs": list(getattr(comp, "client_repairs", ())),
        }
        for name, comp in components.items()
    }


if __name__ == "__main__":
    main()
