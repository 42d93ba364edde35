"""CLI runs for the tests, forked from a warm parent instead of a fresh interpreter.

Every ``python -m overnight …`` a test runs pays about a second of imports before it
does anything, and the suite runs a few hundred of them. The zygote imports overnight
once, then forks one child per run: a real process with its own pid, working folder,
environment, argv and stdin/stdout/stderr, running the real ``overnight.cli.main`` to its
real exit status, so what the tests observe is what a user's shell would. Set
``OVERNIGHT_TEST_EXEC=1`` to run every CLI call as a fresh interpreter instead.

The zygote has no threads when it forks (importing overnight starts none), so the
children start clean.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

_CHILD = r"""
import io, json, os, signal, sys, traceback

import overnight.cli  # the import every run would otherwise pay

requests = os.fdopen(int(sys.argv[1]), "r")
answers = os.fdopen(int(sys.argv[2]), "w")


def child(req):
    os.setpgid(0, 0)  # its own process group: a timeout kills the whole run
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((stdin, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)
    sys.argv = ["overnight", *req["args"]]
    sys.path[0] = os.getcwd()  # as `python -m` does
    code = 1
    try:
        overnight.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        requests.close()
        answers.close()
        child(req)
    answers.write(json.dumps({"pid": pid}) + "\n")
    answers.flush()
    _, status = os.waitpid(pid, 0)
    answers.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
    answers.flush()
"""


class Zygote:
    def __init__(self) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._out: IO[str] = os.fdopen(self._to_child, "w")
        self._in = os.fdopen(self._from_child, "r")
        self.lock = threading.Lock()

    def _read(self, timeout: float | None) -> dict[str, Any] | None:
        if timeout is not None and not select.select([self._in], [], [], max(timeout, 0.0))[0]:
            return None
        line = self._in.readline()
        if not line:
            raise RuntimeError("the CLI zygote died")
        return dict(json.loads(line))

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        with self.lock, tempfile.TemporaryDirectory(prefix="ovn-cli-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self._out.write(json.dumps(request) + "\n")
            self._out.flush()
            started = self._read(None)
            assert started is not None
            done = self._read(timeout)
            if done is None:
                os.killpg(started["pid"], signal.SIGKILL)
                self._read(None)
                raise subprocess.TimeoutExpired(
                    ["overnight", *args], timeout, out.read_text(), err.read_text()
                )
            return subprocess.CompletedProcess(
                ["overnight", *args],
                done["exit"],
                out.read_text(errors="replace"),
                err.read_text(errors="replace"),
            )

    def close(self) -> None:
        self._out.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_zygote: Zygote | None = None


def zygote() -> Zygote | None:
    """The session's zygote, started on first use (None when exec is asked for)."""
    global _zygote
    if os.environ.get("OVERNIGHT_TEST_EXEC"):
        return None
    if _zygote is None or _zygote.proc.poll() is not None:
        _zygote = Zygote()
    return _zygote


def close() -> None:
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None
