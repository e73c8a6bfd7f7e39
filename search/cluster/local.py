"""A multi-node Ray cluster on one machine: a head and workers as ``ray start`` processes.

For trying ``peft-search submit``, and for the tests and benchmarks that need real nodes to
lose. Token authentication is on; every process is stopped by pid (never ``ray stop``, which
would stop every Ray cluster on the machine).
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One ``ray start --block`` process in its own session, with everything it starts."""

    def __init__(self, args: list[str], env: dict, log: Path, wrapper: list[str] = ()) -> None:
        ray = Path(sys.executable).with_name("ray")
        self.log = log
        self.proc = subprocess.Popen([*wrapper, str(ray), "start", "--block", *args], env=env,
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL every process of the node at once: a machine that dies."""
        try:
            root = psutil.Process(self.proc.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)


def wait_for(predicate, timeout_s: float, what: str, log: Path | None = None, poll_s: float = 1.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise TimeoutError(f"{what} not ready after {timeout_s} s\n{tail}")
        time.sleep(poll_s)


class LocalCluster:
    """``with LocalCluster(workers=1, cpus=2) as c:`` -> ``c.address`` (Jobs API), ``c.env``
    (what a client needs: the token), ``c.head``, ``c.workers``. ``head_cpus`` defaults to
    ``cpus``; ``worker_wrapper`` prefixes the workers' command (e.g. ``unshare`` to give them a
    filesystem view of their own); ``node_path`` is the nodes' PATH, where a job finds ``python``
    (default: this interpreter's folder first, as a cluster image with the project installed)."""

    def __init__(self, workers: int = 1, cpus: int = 2, head_cpus: int | None = None,
                 object_store_mb: int = 200, worker_wrapper: list[str] = (), node_path: str | None = None) -> None:
        self.worker_wrapper = list(worker_wrapper)
        self.root = Path(tempfile.mkdtemp(prefix="psc", dir="/tmp"))  # short: Ray's socket paths are limited
        token = self.root / "token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                    "PATH": node_path or f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)
        self.n_workers, self.object_store = workers, object_store_mb * 2**20
        self.cpus, self.head_cpus = cpus, cpus if head_cpus is None else head_cpus
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []

    def _node_args(self, temp_dir: str, cpus: int) -> list[str]:
        # each node its own temp dir, as on machines of their own: nodes sharing one delete each
        # other's unpacked job working directories when they clean up
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--temp-dir",
                str(self.root / temp_dir), "--object-store-memory", str(self.object_store),
                "--dashboard-agent-listen-port", str(free_port())]

    def __enter__(self) -> "LocalCluster":
        gcs, dashboard = free_port(), free_port()
        self.address = f"http://127.0.0.1:{dashboard}"
        try:
            self.head = RayNode(["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                                 "--dashboard-port", str(dashboard), *self._node_args("h", self.head_cpus)],
                                self.env, self.root / "head.log")
            wait_for(self._jobs_api_up, 90, "the head's Jobs API", self.head.log)
            for i in range(self.n_workers):
                node = RayNode(["--address", f"127.0.0.1:{gcs}", *self._node_args(f"w{i}", self.cpus)],
                               self.env, self.root / f"worker{i}.log", self.worker_wrapper)
                self.workers.append(node)
                wait_for(lambda: "Ray runtime started" in node.log.read_text(), 90, f"worker {i}", node.log)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _jobs_api_up(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(self.address + "/api/version", timeout=2):
                return True
        except OSError as err:  # 401 without a token still means the dashboard answers
            return getattr(err, "code", None) is not None

    def __exit__(self, *exc) -> None:
        for node in reversed([n for n in (self.head, *self.workers) if n is not None]):
            node.kill()
