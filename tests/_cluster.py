"""A real Ray cluster of several nodes on 127.0.0.1 for the tests: each node a ``ray start --block``
in a session and temp dir of its own, so one can be lost (every process of it SIGKILLed, as a
preempted machine) while the others run on."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _servers import free_port

__all__ = ["LocalCluster", "Node"]

_RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc; Ray's workers descend from their raylet)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _node_id(address: str, temp_dir: str, env: dict[str, str], timeout: float = 60) -> str:
    """The Ray node id of the live node of the cluster at ``address`` started with ``temp_dir``
    (its object store's socket lies there), once the cluster counts it."""
    code = (f"import ray; ray.init(address='{address}', log_to_driver=False); "
            f"print(*('node-id=' + n['NodeID'] for n in ray.nodes() "
            f"if n['Alive'] and n['ObjectStoreSocketName'].startswith({temp_dir!r})))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # Ray may print warnings on stdout too: only the marked line counts
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        found = [line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("node-id=")]
        if out.returncode == 0 and found:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"the test cluster at {address} never had the node of {temp_dir}")


@dataclass
class Node:
    """One node: its ``ray start --block`` process (the node's processes descend from it) and temp dir."""

    proc: subprocess.Popen[bytes]
    temp_dir: str
    node_id: str = ""  # Ray's id (hex), once the cluster counts the node

    def pids(self) -> list[int]:
        """Every live process of the node: below its ``ray start``, or naming its temp dir."""
        found = set(_descendants(self.proc.pid))
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            with contextlib.suppress(OSError):
                if self.temp_dir in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.add(pid)
        return sorted(found)

    def lose(self) -> list[int]:
        """The machine is gone: every process of the node frozen at once, then SIGKILLed (none
        reacts to another's death); the pids it had."""
        pids = self.pids()
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        with contextlib.suppress(OSError):
            self.proc.wait(timeout=30)
        return pids


@dataclass
class LocalCluster:
    """Nodes started with ``head()`` then ``add()``; ``stop()`` removes every one of them.

    ``env`` is every node's environment; a lost node is declared dead after ~3 s when it sets
    ``RAY_health_check_period_ms=1000`` and ``RAY_health_check_failure_threshold=3``."""

    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)
    address: str = ""

    def _start(self, prefix: str, args: list[str], cpus: float) -> Node:
        temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                 "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
        proc = subprocess.Popen([*_RAY, "start", "--block", "--num-cpus", f"{cpus:g}", "--node-ip-address", "127.0.0.1",
                                 "--disable-usage-stats", "--temp-dir", temp_dir, *ports, *args], env=self.env,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nodes.append(Node(proc, temp_dir))
        return self.nodes[-1]

    def head(self, cpus: float = 1, dashboard_port: int | None = None) -> Node:
        """The head node (with Ray's dashboard and job server on ``dashboard_port``, else none)."""
        port = free_port()
        dashboard = (["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port)]
                     if dashboard_port is not None else ["--include-dashboard", "false"])
        node = self._start("rh", ["--head", "--port", str(port), *dashboard], cpus)
        self.address = f"127.0.0.1:{port}"
        node.node_id = _node_id(self.address, node.temp_dir, self.env)
        return node

    def add(self, cpus: float = 1, resources: str | None = None) -> Node:
        """Another node, once the cluster counts it."""
        node = self._start("rw", ["--address", self.address, *(["--resources", resources] if resources else [])], cpus)
        node.node_id = _node_id(self.address, node.temp_dir, self.env)
        return node

    def stop(self) -> None:
        """Stop every node (their sessions, then any process naming their temp dirs)."""
        for node in self.nodes:
            with contextlib.suppress(OSError):
                os.killpg(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(node.proc.poll() is None for node in self.nodes):
            time.sleep(0.2)
        for node in self.nodes:
            node.lose()
            shutil.rmtree(node.temp_dir, ignore_errors=True)
