"""A local Ray cluster of several nodes on one machine, started with the multi-node guide's commands.

    ray start --head --port=P --num-cpus=C --num-gpus=0 --temp-dir=T/n0 --resources=R ... --block
    ray start --address=HOST:P --num-cpus=C --num-gpus=0 --temp-dir=T/n1 --resources=R ... --block   (per other node)

(R gives each node GPUS_PER_NODE worker slots, where a GPU node has GPUS_PER_NODE GPUs; see
layout_probe.py.)

Each `ray start` runs with `--block` in its own process group, so this module holds the pid of
every process it started: `ray start --block` stays in the foreground and, on SIGTERM, shuts
down the Ray processes it spawned (raylet, GCS, log monitor, workers). `stop()` signals those
process groups only (worker nodes first, then the head), escalating to SIGKILL; it never runs
`ray stop`, which would end every Ray cluster of the machine's user. A private temp dir keeps
other jobs from finding the cluster, and every port is a free one.

`ray.cluster_utils.Cluster` would manage its processes too, but it starts nodes through Ray's
internal Python API rather than the `ray start` command lines a user types on a cluster, which
is what this rehearses.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .runner import stop_process_group

AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_temp_dir() -> Path:
    """A new name for a Ray temp dir, short (unix socket paths are limited to 107 bytes) and
    private, so no other job attaches; created only when a run starts."""
    return Path("/tmp") / f"erc-ray-{os.getpid()}-{secrets.token_hex(3)}"


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


class LocalRayCluster:
    """`with LocalRayCluster(nnodes) as cluster:` ... `cluster.address`; torn down on any exit."""

    def __init__(
        self,
        nnodes: int,
        num_cpus: int = 16,
        log=print,
        start_timeout: float = 180.0,
        temp_dir=None,
        resources: dict | None = None,
        log_dir: Path | None = None,
    ):
        self.nnodes, self.num_cpus, self.log, self.start_timeout = nnodes, num_cpus, log, start_timeout
        self.resources = resources or {}
        self._log_dir = Path(log_dir) if log_dir else None
        self.temp_dir = Path(temp_dir) if temp_dir else private_temp_dir()
        self.port = free_port()
        self.host = "127.0.0.1"
        self.procs: list[subprocess.Popen] = []
        self.commands: list[list[str]] = []
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # One authentication mode for every node and the driver: a head started by `ray start`
        # turns token auth on by itself when ~/.ray/auth_token exists, a worker node does not,
        # and the worker is then refused. The cluster is local and private; no token.
        self.env.update(AUTH_ENV)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def node_commands(self) -> list[list[str]]:
        ray = _ray_executable()

        def common(i: int) -> list[str]:
            # A temp dir per node, as on separate machines: each node's log monitor streams its own
            # workers' output once.
            out = [
                f"--num-cpus={self.num_cpus}",
                "--num-gpus=0",
                f"--temp-dir={self.temp_dir}/n{i}",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}",
            ]
            if self.resources:
                out.append("--resources=" + json.dumps(self.resources, separators=(",", ":")))
            return out

        head = [
            ray,
            "start",
            "--head",
            f"--port={self.port}",
            f"--node-ip-address={self.host}",
            *common(0),
            "--include-dashboard=false",
            "--block",
        ]
        workers = [
            [ray, "start", f"--address={self.address}", f"--node-ip-address={self.host}", *common(i), "--block"]
            for i in range(1, self.nnodes)
        ]
        return [head, *workers]

    @property
    def log_dir(self) -> Path:
        """Where each `ray start` writes its output (kept after the cluster is gone)."""
        return self._log_dir or self.temp_dir

    def _out(self, name: str) -> Path:
        return self.log_dir / f"ray-{name}.out"

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self._out(name), "w")
        self.commands.append(cmd)
        self.log("[smoke] $ " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def _wait_for(self, what: str, ready) -> None:
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                i = self.procs.index(dead[0])
                tail = self._out(f"node{i}").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(
                    f"`ray start` of node {i} exited with {dead[0].returncode} while waiting for "
                    f"{what} (output: {self._out(f'node{i}')}): " + " | ".join(tail)
                )
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"Ray: {what} not ready after {self.start_timeout:.0f}s (output: {self.log_dir})")

    def _alive_nodes(self) -> int:
        # `ray start --block` logs this line once its node is up and registered with the head.
        return sum(
            "Ray runtime started" in self._out(f"node{i}").read_text(errors="replace")
            for i in range(len(self.procs))
            if self._out(f"node{i}").exists()
        )

    def start(self) -> LocalRayCluster:
        cmds = self.node_commands()
        self.temp_dir.mkdir(parents=True)
        try:
            self._spawn(cmds[0], "node0")
            self._wait_for("the head node", lambda: self._alive_nodes() >= 1)
            for i, cmd in enumerate(cmds[1:], 1):
                self._spawn(cmd, f"node{i}")
            self._wait_for(f"{self.nnodes} nodes", lambda: self._alive_nodes() >= self.nnodes)
        except BaseException:
            self.stop()
            raise
        self.log(f"[smoke] local Ray cluster of {self.nnodes} nodes at {self.address} (temp dir {self.temp_dir})")
        return self

    def own_processes(self) -> list[int]:
        """Pids of live processes whose command line names this cluster's temp dir."""
        key = str(self.temp_dir).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if key in f.read():
                            pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def stop(self, grace: float = 40.0) -> None:
        """Stop the nodes this object started: worker nodes first (they drain through the head)."""
        for proc in reversed(self.procs):
            stop_process_group(proc, ((signal.SIGTERM, grace), (signal.SIGKILL, 10)))
        # Processes a raylet started in a session of their own still name the temp dir.
        for pid in self.own_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs = []

    def remove_temp_dir(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # created by this object, in this run

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
