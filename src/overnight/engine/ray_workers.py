"""Workers as Ray actors (``executor = "ray"``, the optional extra ``overnight[ray]``).

Each parallel slot is one actor running the same worker as a process would
(``worker_main.serve``), connected back to the night's process. Ray's own retries stay
off (``max_restarts=0``, ``max_task_retries=0``, ``retry_exceptions=False``): a product
failure is never retried into a pass, and a dead actor is the night's to judge — a
crash (``crashed``) when its node is alive, ``interrupted`` when its node was lost.
Artifacts are written by the actor into the night's folder: across machines that folder
must be on a filesystem every node mounts at the same path (README: Ray).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import ray

_init_lock = threading.Lock()


def driver_host(address: str | None) -> str:
    """Where the actors reach the night's process: loopback for a local cluster, else
    this machine's address as Ray sees it."""
    if address in (None, "local"):
        return "127.0.0.1"
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


@ray.remote(max_restarts=0, max_task_retries=0)
class _Worker:
    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def serve(self, address: tuple[str, int], key: bytes, slot: int, output: str) -> str:
        from .worker_main import serve

        serve(address, key, slot, str(ray.get_runtime_context().get_node_id()), output)
        return "left"


class _Actor:
    def __init__(self, actor: Any, node: str, ref: Any, output: Path) -> None:
        self.actor = actor
        self.node = node
        self.ref = ref
        self.output = output
        self.description = f"Ray actor on node {node[:12]}"

    def alive(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0)
        return not ready

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)

    def death(self, timeout: float) -> tuple[bool, str]:
        try:
            ray.get(self.ref, timeout=timeout)
            return False, "worker left"
        except ray.exceptions.GetTimeoutError:
            self.kill()
            return False, "worker stopped answering and was killed"
        except ray.exceptions.RayActorError as exc:
            lost = not _node_alive(self.node)
            first = str(exc).strip().splitlines()
            cause = next((line.strip() for line in first if "dead because" in line or "died" in line), "")
            from .workers import signal_in_output

            sig = signal_in_output(self.stderr_tail())
            if sig is not None and not lost:
                return False, f"worker died: {sig} (Ray: {cause or type(exc).__name__})"
            return lost, f"actor died: {cause or type(exc).__name__}"
        except Exception as exc:  # the actor's own error: it raised out of serve()
            return False, f"worker failed: {type(exc).__name__}"

    def stderr_tail(self) -> str:
        from .workers import read_tail

        return read_tail(self.output)


def _node_alive(node: str) -> bool:
    with contextlib.suppress(Exception):
        for n in ray.nodes():  # type: ignore[no-untyped-call]
            if n.get("NodeID") == node:
                return bool(n.get("Alive"))
        return False
    return True  # cannot tell: not called lost


class RayLauncher:
    """Starts (or joins) the Ray cluster on first use; one actor per slot."""

    def __init__(self, address: str | None, parallel: int) -> None:
        self.address = address
        self.parallel = parallel
        self._started_here = False
        self._actors: list[_Actor] = []

    def _init(self) -> None:
        with _init_lock:
            if ray.is_initialized():
                return
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self._started_here = True

    def launch(self, address: tuple[str, int], key: bytes, slot: int, log_path: Path) -> _Actor:
        self._init()
        cpus = float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
        # One CPU an actor, or a share when the slots outnumber the cluster's CPUs (all of
        # them must run at once, or the night would wait on actors Ray never places).
        share = min(1.0, cpus / max(self.parallel, 1))
        actor = _Worker.options(num_cpus=share).remote()  # type: ignore[attr-defined]
        node = ray.get(actor.node.remote(), timeout=120)
        ref = actor.serve.options(retry_exceptions=False).remote(address, key, slot, str(log_path))
        launched = _Actor(actor, node, ref, log_path)
        self._actors.append(launched)
        return launched

    def close(self) -> None:
        for actor in self._actors:
            actor.kill()
        self._actors.clear()
        if self._started_here:
            with contextlib.suppress(Exception):
                ray.shutdown()
