"""The night's side of its workers (``executor = "process"`` or ``"ray"``).

One worker per parallel slot, each with its own components, each connected back to the
night's process over one authenticated connection (``multiprocessing.connection``: an
HMAC handshake with a key made for the night). A worker's records reach the ledger
through the night's one writer, in the order the worker made them and before the
attempt's end record (promise 3); its classified faults reach the repair agent at once.

A worker that dies under an attempt ends that attempt: ``crashed`` with its signal or
exit code, the last step and the tail of its stderr; a lost node or a worker the night
itself stopped is ``interrupted`` (not counted). The next attempt gets a fresh worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..components import Component
from ..config import LoadedConfig
from ..errors import ConfigError, UsageError
from ..ledger import ops
from ..redaction import redact, registered_secrets
from ..verdicts import Verdict
from .executors import AttemptOutcome, AttemptRequest, cycle_logger
from .journal import TRACEBACK_MAX
from .worker_main import KEY_ENV, RemoteLedger, WorkerSpec, component_state, crash_file, no_delay

if TYPE_CHECKING:
    from ..agent import RepairAgent
    from ..ledger import Ledger
    from .progress import ProgressSink
    from .stopping import Stopping

log = logging.getLogger("overnight")

START_S = 180.0  # a worker's start: the interpreter, the imports, its components' connect
CANCEL_S = 10.0  # a cancelled attempt's answer, before its worker is killed
STOP_S = 5.0  # a worker's own exit at the night's end, before it is killed
HARD_GRACE_S = 30.0  # past the cycle's timeout, a worker that has not answered is killed
STDERR_TAIL = 4000  # characters of a dead worker's stderr kept with its attempt


class WorkerStartFailed(RuntimeError):
    """A worker could not start (its components, its scenario's import)."""


class Launched(Protocol):
    """One started worker, as its launcher knows it."""

    description: str

    def alive(self) -> bool: ...

    def kill(self) -> None: ...

    def death(self, timeout: float) -> tuple[bool, str]:
        """Wait up to ``timeout`` for it to be gone; (lost, cause): ``lost`` when the
        infrastructure took it (a node), else it crashed, ``cause`` its signal or code."""

    def stderr_tail(self) -> str: ...


class Launcher(Protocol):
    def start(self) -> None:
        """Be ready to launch (join the cluster); raises, naming why, when it cannot."""

    def launch(self, address: tuple[str, int], key: bytes, slot: int, log_path: Path) -> Launched: ...

    def close(self) -> None: ...


class _Process:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.description = f"worker process {proc.pid}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()

    def death(self, timeout: float) -> tuple[bool, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait(STOP_S)
            return False, "worker stopped answering and was killed"
        if code < 0:
            with contextlib.suppress(ValueError):
                return False, f"worker died: {signal.Signals(-code).name}"
            return False, f"worker died: signal {-code}"
        return False, f"worker exited with code {code}"

    def stderr_tail(self) -> str:
        return read_tail(self.log_path)


class ProcessLauncher:
    """Workers as processes of this machine: ``python -c`` the worker's main, in a
    session of their own (a terminal's Ctrl-C reaches the night, which stops them), its
    output in ``workers/`` of the night's folder."""

    def start(self) -> None:
        return None

    def launch(self, address: tuple[str, int], key: bytes, slot: int, log_path: Path) -> Launched:
        env = dict(os.environ)
        env[KEY_ENV] = key.hex()
        out = open(log_path, "ab")  # noqa: SIM115 — the child holds it; closed here at once
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from overnight.engine.worker_main import main; main()",
                    address[0],
                    str(address[1]),
                    str(slot),
                    str(log_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            out.close()
        return _Process(proc, log_path)

    def close(self) -> None:
        return None


# What faulthandler writes for the signals a native crash raises.
_FAULTHANDLER = {
    "Segmentation fault": "SIGSEGV",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}


def signal_in_output(tail: str) -> str | None:
    """The signal a worker's faulthandler named in its last output, if any."""
    for line in reversed(tail.splitlines()):
        if line.startswith("Fatal Python error: "):
            return _FAULTHANDLER.get(line.removeprefix("Fatal Python error: ").strip())
    return None


def read_tail(path: Path, size: int = STDERR_TAIL) -> str:
    """The last ``size`` characters of a worker's output, then its crash file (a native
    crash's stacks), redacted."""
    parts = []
    for file in (path, crash_file(path)):
        try:
            with open(file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(f.tell() - size, 0))
                parts.append(f.read().decode("utf-8", errors="replace"))
        except OSError:
            continue
    return redact("".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)) or ""


@dataclass
class _Current:
    request: AttemptRequest
    future: asyncio.Future[AttemptOutcome]
    steps: dict[int, str]  # seq -> name of the steps started and not finished
    sent: float  # perf_counter when the worker was asked: the attempt's duration starts here
    last_step: str | None = None


class WorkerSlot:
    """One parallel slot: its worker (started on first use, replaced after a death) and
    the attempt it runs."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.conn: Connection | None = None
        self.launched: Launched | None = None
        self.current: _Current | None = None
        self._hello: asyncio.Future[Connection] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._start_error: str | None = None

    # -- an attempt ------------------------------------------------------------------

    def is_ready(self) -> bool:
        # A worker's death closes its connection (``_gone``): no question to the
        # launcher per attempt (for Ray, a round trip to the cluster).
        return self.conn is not None and self.launched is not None

    async def ready(self) -> None:
        try:
            await self._ensure_worker()
            self._start_error = None
        except WorkerStartFailed as exc:
            self._start_error = str(exc)

    async def run(self, request: AttemptRequest) -> AttemptOutcome:
        if self._start_error is None and not self.is_ready():
            await self.ready()  # not made ready, or its worker died since
        if self._start_error is not None or self.conn is None:
            message = self._start_error or "its worker is gone"
            self._start_error = None  # the next attempt tries a fresh worker
            return AttemptOutcome(
                Verdict.HARNESS_ERROR,
                0.0,
                error={"error_type": "WorkerStartFailed", "error_message": message},
            )
        loop = asyncio.get_running_loop()
        current = _Current(request, loop.create_future(), {}, time.perf_counter())
        self.current = current
        self._send(("attempt", request, component_state(self.pool.components)))
        bound = self.pool.cycle_timeout + HARD_GRACE_S
        try:
            try:
                async with asyncio.timeout(bound):
                    return await asyncio.shield(current.future)
            except TimeoutError:
                # It answers neither its own timeout nor us: stuck below Python. Killed;
                # the attempt is the cycle's timeout.
                self._kill()
                await self._gone(
                    f"no answer {bound:g} s into the attempt (cycle_timeout + {HARD_GRACE_S:g} s)"
                )
                outcome = await current.future
                outcome.verdict = Verdict.TIMEOUT
                outcome.error["error_type"] = "CycleTimeout"
                return outcome
            except asyncio.CancelledError:
                # The night is interrupted: the worker cancels the attempt itself, as
                # inline; one that does not answer is killed.
                self._send(("cancel",))
                try:
                    async with asyncio.timeout(CANCEL_S):
                        outcome = await asyncio.shield(current.future)
                except TimeoutError:
                    self._kill()
                    await self._gone("it did not stop its attempt when the night was interrupted")
                    outcome = await current.future
                outcome.verdict = Verdict.INTERRUPTED
                outcome.worker = None  # the night's stop, not a worker lost: no rerun now
                return outcome
        finally:
            self.current = None

    # -- the worker ------------------------------------------------------------------

    async def _ensure_worker(self) -> None:
        if self.conn is not None and self.launched is not None and self.launched.alive():
            return
        await self._discard()
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._ready = loop.create_future()
        log_path = self.pool.log_dir / f"worker-{self.index}.log"
        try:
            self.launched = await asyncio.to_thread(
                self.pool.launcher.launch, self.pool.address, self.pool.key, self.index, log_path
            )
        except Exception as exc:
            raise WorkerStartFailed(f"could not start a worker: {redact(str(exc))}") from None
        try:
            async with asyncio.timeout(START_S):
                conn = await self._hello
                self.conn = conn
                conn.send(self.pool.spec)
                loop.add_reader(conn.fileno(), self._on_readable)
                await self._ready
        except TimeoutError:
            tail = self.launched.stderr_tail().strip().splitlines()[-1:] or [""]
            await self._discard()
            raise WorkerStartFailed(
                f"a worker did not start within {START_S:g} s {tail[0]}".rstrip()
            ) from None
        except (WorkerStartFailed, asyncio.CancelledError):
            await self._discard()  # interrupted while it started: it goes too
            raise
        log.debug("slot %d: %s ready", self.index, self.launched.description)

    def attach(self, conn: Connection) -> None:
        """The accept thread's handshake gave this slot its worker's connection."""
        if self._hello is not None and not self._hello.done():
            self._hello.set_result(conn)
        else:
            conn.close()  # a worker we no longer wait for

    def _on_readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._dispatch(conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().create_task(self._gone(None))

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        cur = self.current
        if kind == "op":
            name, args = message[1], message[2]
            if name not in RemoteLedger.ALLOWED:
                log.error("slot %d: a worker sent an unknown record %r; ignored", self.index, name)
                return
            self.pool.ledger.submit(getattr(ops, name), *args)
            if cur is not None and name == "step_started":
                cur.steps[args[3]] = cur.last_step = args[4]
                self.pool.progress.step_changed(args[1], args[4])
            elif cur is not None and name == "step_finished":
                cur.steps.pop(args[3], None)
                self.pool.progress.step_changed(args[1], next(reversed(cur.steps.values()), None))
        elif kind == "signal":
            agent = self.pool.agent()
            if agent is not None:
                agent.remote_signal(message[1], message[2], message[3], message[4])
        elif kind == "log":
            name, cycle = message[2], message[2].removeprefix("overnight.scenario.c")
            if cycle != name and cycle.isdigit():
                # A cycle's ``ctx.log``: as inline, a logger kept out of logging's registry
                # (one a cycle would stay for the whole night).
                logger = cycle_logger(int(cycle))
            else:
                logger = logging.getLogger(name)
            logger.log(message[1], "%s", message[3])
        elif kind == "done":
            if cur is not None and not cur.future.done():
                cur.future.set_result(message[1])
        elif kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif kind == "start_failed" and self._ready is not None and not self._ready.done():
            self._ready.set_exception(WorkerStartFailed(f"a worker could not start: {message[1]}"))

    async def _gone(self, why: str | None) -> None:
        """The worker's connection closed: it died. Settle the attempt it ran."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        launched = self.launched
        if launched is None:
            return
        lost, cause = await asyncio.to_thread(launched.death, STOP_S)
        if self._ready is not None and not self._ready.done():
            last = launched.stderr_tail().strip().splitlines()[-1:] or [""]
            self._ready.set_exception(
                WorkerStartFailed(f"a worker died while starting ({cause}) {last[0]}".rstrip())
            )
        cur = self.current
        if cur is None or cur.future.done():
            return
        cause = why or cause
        step = cur.last_step if cur.steps else None
        if step is not None:
            where = f" in step {step}"
        else:
            where = f" after step {cur.last_step}" if cur.last_step else " before any step"
        tail = launched.stderr_tail()
        stopping = self.pool.stopping.interrupted
        verdict = Verdict.INTERRUPTED if lost or stopping else Verdict.CRASHED
        message = f"{cause}{where}" if not lost else f"node lost: {cause}{where}"
        outcome = AttemptOutcome(
            verdict,
            time.perf_counter() - cur.sent,
            step,
            {
                "error_type": "WorkerLost" if lost else "WorkerCrashed",
                "error_message": message,
                "traceback": (f"{launched.description}; the tail of its output:\n{tail}")[-TRACEBACK_MAX:],
            },
            open_steps=True,
            worker=launched.description if lost and not stopping else None,
        )
        cur.future.set_result(outcome)

    def _send(self, message: tuple[Any, ...]) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(message)
        except (OSError, EOFError, ValueError):
            asyncio.get_running_loop().create_task(self._gone(None))

    def _kill(self) -> None:
        if self.launched is not None:
            self.launched.kill()

    async def _discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        launched, self.launched = self.launched, None
        if launched is not None and launched.alive():
            launched.kill()
            await asyncio.to_thread(launched.death, STOP_S)

    async def stop(self) -> None:
        """Ask the worker to leave; kill it past ``STOP_S``."""
        launched = self.launched
        if self.conn is not None:
            self._send(("stop",))
        if launched is not None and launched.alive():
            await asyncio.to_thread(launched.death, STOP_S)  # kills it past the bound
        await self._discard()


class WorkerPool:
    """The night's workers: one per slot, an accept thread handing each its connection."""

    def __init__(
        self,
        name: str,
        launcher: Launcher,
        spec: WorkerSpec,
        *,
        ledger: Ledger,
        components: Mapping[str, Component],
        agent: Callable[[], RepairAgent | None],
        progress: ProgressSink,
        stopping: Stopping,
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.launcher = launcher
        self.spec = spec
        self.ledger = ledger
        self.components = components
        self.agent = agent
        self.progress = progress
        self.stopping = stopping
        self.cycle_timeout = spec.cycle_timeout
        self.host = host
        self.key = secrets.token_bytes(32)
        self.log_dir = Path(spec.night_path) / "workers"
        self.slots: dict[int, WorkerSlot] = {}
        self._listener: Listener | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] = (host, 0)

    async def start(self) -> None:
        """Ready to launch workers, or ``WorkerStartFailed`` saying why not (the night
        then ends aborted, before any cycle)."""
        try:
            async with asyncio.timeout(START_S):
                await asyncio.to_thread(self.launcher.start)
        except TimeoutError:
            raise WorkerStartFailed(f"{self.name} workers: not ready within {START_S:g} s") from None
        except Exception as exc:
            detail = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise WorkerStartFailed(f"{self.name} workers cannot start: {detail}") from None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._listener = Listener((self.host, 0), authkey=self.key)
        self.address = self._listener.address
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._accept, args=(self._listener, loop), name="overnight-workers", daemon=True
        )
        self._thread.start()

    def slot(self, index: int) -> WorkerSlot:
        return self.slots.setdefault(index, WorkerSlot(self, index))

    def _accept(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                conn = listener.accept()  # the HMAC handshake: only our workers get in
                no_delay(conn)
            except OSError:
                return  # closed: the night ends
            except Exception:  # a peer without the key, or one that hung up mid-handshake
                continue
            try:
                if not conn.poll(START_S):
                    conn.close()
                    continue
                hello = conn.recv()
                slot = self.slots.get(int(hello[1]))
            except Exception:
                conn.close()
                continue
            if slot is None or hello[0] != "hello":
                conn.close()
                continue
            with contextlib.suppress(RuntimeError):  # the loop closed: the night is over
                loop.call_soon_threadsafe(slot.attach, conn)

    async def stop(self, reason: str) -> None:
        await asyncio.gather(*(s.stop() for s in self.slots.values()), return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                # Wakes the accept thread (a plain close would leave it blocked in accept).
                listener._listener._socket.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                listener.close()
        await asyncio.to_thread(self.launcher.close)


def check_executor(plan: Any, pytest_suite: bool, where: str) -> None:
    """Refuse, before anything starts, an executor this night cannot use (exit 2)."""
    if plan.executor == "inline":
        return
    if pytest_suite:
        raise ConfigError(
            f"{where}: run.executor = {plan.executor!r}: a pytest suite already runs each attempt "
            'in a pytest process of its own; use executor = "inline"'
        )
    if plan.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise UsageError("executor = \"ray\" needs Ray, which is not installed: pip install 'overnight[ray]'")


def check_worker_components(
    plan: Any, components: Mapping[str, Component], where: str, key_prefix: str = ""
) -> None:
    """A component that cannot be built in every worker as well is a config error (exit 2)."""
    if plan.executor == "inline":
        return
    for name, comp in components.items():
        why = comp.worker_conflict()
        if why:
            raise ConfigError(
                f"{where}: {key_prefix}components.{name}: {why} (run.executor = {plan.executor!r})"
            )


def worker_pool(
    plan: Any,
    loaded: LoadedConfig,
    night_path: Path,
    components: Mapping[str, Component],
    ledger: Ledger,
    agent: Callable[[], RepairAgent | None],
    progress: ProgressSink,
    stopping: Stopping,
) -> WorkerPool:
    """The night's workers for ``plan.executor`` (``process`` or ``ray``)."""
    from ..sandbox import running_sandbox

    box = running_sandbox()
    spec = WorkerSpec(
        loaded=loaded,
        scenario=plan.scenario,
        night_id=night_path.name,
        night_path=str(night_path),
        night_dir=str(night_path.parent),
        seed=plan.seed,
        cycle_timeout=plan.cycle_timeout,
        sandbox=box.view() if box is not None else None,
        routes={n: r for n, c in components.items() if (r := getattr(c, "routed_via", None)) is not None},
        log_level=logging.getLogger("overnight").getEffectiveLevel(),
        secrets=registered_secrets(),
    )
    launcher: Launcher
    host = "127.0.0.1"
    if plan.executor == "ray":
        from .ray_workers import RayLauncher, driver_host

        launcher = RayLauncher(plan.ray_address, plan.parallel)
        host = driver_host(plan.ray_address)
    else:
        launcher = ProcessLauncher()
    return WorkerPool(
        plan.executor,
        launcher,
        spec,
        ledger=ledger,
        components=components,
        agent=agent,
        progress=progress,
        stopping=stopping,
        host=host,
    )
