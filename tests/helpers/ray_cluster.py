"""A two-node Ray cluster on loopback for the Ray backend's tests and benchmark.

The head node (2 CPUs, with the dashboard and its Job API) and a worker node that declares
``GPUS`` GPUs (Ray only counts them) run on this machine, every listener on 127.0.0.1:

- ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` plus ``--node-ip-address=127.0.0.1`` keeps Ray on
  loopback (without the variable Ray swaps 127.0.0.1 for the machine's address and listens on
  every interface);
- but with that variable ``ray start --address`` refuses to add a worker node ("multi-node
  clusters are not supported on Windows and OSX"), so the worker is started through
  ``ray.scripts.scripts.main`` with only that check seeing the variable as 1 (see
  :data:`_WORKER_SHIM`); everything else, in that process and every process it starts, sees 0.

Each ``ray start`` runs in a session of its own and the daemons it starts stay in it, so
:func:`stop_cluster` stops exactly this cluster's processes (by process group, then by session)
and never another cluster on the machine, as ``ray stop`` would.  ``NODE_ENV`` is set in each
node's environment (``head`` / ``gpu``), and the jobs that run there inherit it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GPUS",
    "HEAD_CPUS",
    "NODE_ENV",
    "WORKER_CPUS",
    "RayCluster",
    "loopback_violations",
    "start_cluster",
    "stop_cluster",
]

HEAD_CPUS = 2
WORKER_CPUS = 2
GPUS = 2
NODE_ENV = "FETCHML_TEST_RAY_NODE"
_OBJECT_STORE_BYTES = 100 * 1000 * 1000
_START_TIMEOUT_S = 120.0

_WORKER_SHIM = """
import sys, types
import ray._private.ray_constants as constants
import ray.scripts.scripts as scripts
view = types.SimpleNamespace(**{k: getattr(constants, k) for k in dir(constants)})
view.ENABLE_RAY_CLUSTER = True
scripts.ray_constants = view
sys.argv = ["ray", *sys.argv[1:]]
scripts.main()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ray_env(temp_dir: Path, node: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TMPDIR=str(temp_dir),
        RAY_DEDUP_LOGS="0",
    )
    env[NODE_ENV] = node
    return env


@dataclass
class RayCluster:
    """A running loopback cluster: ``address`` is the dashboard (Job API) URL."""

    address: str
    gcs_address: str
    temp_dir: Path
    sessions: list[int] = field(default_factory=list)
    log: Path | None = None

    def pids(self) -> set[int]:
        """Live processes of this cluster (those in its ``ray start`` sessions)."""
        found = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getsid(int(name)) in self.sessions:
                        found.add(int(name))
        return found


def _ray_start(cluster: RayCluster, argv: list[str], env: dict[str, str]) -> None:
    """Run one ``ray start`` in a new session; raise with its output if it fails."""
    assert cluster.log is not None
    with cluster.log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        cluster.sessions.append(proc.pid)
        try:
            code = proc.wait(timeout=_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    if code != 0:
        tail = cluster.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{argv[:3]} failed ({code}):\n{tail}")


def start_cluster(temp_dir: Path) -> RayCluster:
    """Start the head and the GPU worker under ``temp_dir``; wait until both serve.

    Blocks ~10-20 s.  Raises RuntimeError (after stopping what started) if they do not.
    """
    temp_dir.mkdir(parents=True, exist_ok=True)
    gcs_port, dash_port = _free_port(), _free_port()
    cluster = RayCluster(
        address=f"http://127.0.0.1:{dash_port}",
        gcs_address=f"127.0.0.1:{gcs_port}",
        temp_dir=temp_dir,
        log=temp_dir / "ray-start.log",
    )
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    common += [f"--object-store-memory={_OBJECT_STORE_BYTES}"]
    try:
        head = [ray_cli, "start", "--head", f"--port={gcs_port}", *common]
        head += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        head += [f"--dashboard-port={dash_port}", f"--temp-dir={temp_dir}"]
        head += [f"--num-cpus={HEAD_CPUS}", "--num-gpus=0"]
        head += [f"--ray-client-server-port={_free_port()}"]
        head += _agent_ports()
        _ray_start(cluster, head, _ray_env(temp_dir, "head"))
        worker = [sys.executable, "-c", _WORKER_SHIM, "start", f"--address={cluster.gcs_address}"]
        worker += [*common, f"--num-cpus={WORKER_CPUS}", f"--num-gpus={GPUS}"]
        worker += ['--resources={"fetchml_gpu_node": 1}', *_agent_ports()]
        _ray_start(cluster, worker, _ray_env(temp_dir, "gpu"))
        _wait_ready(cluster)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _agent_ports() -> list[str]:
    return [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


def _wait_ready(cluster: RayCluster) -> None:
    """Until the Job API answers and both nodes are alive with their resources."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    deadline = time.monotonic() + _START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            JobSubmissionClient(cluster.address).list_jobs()
            nodes = list_nodes(address=cluster.address, filters=[("state", "=", "ALIVE")])
            gpus = sum(n.resources_total.get("GPU", 0) for n in nodes)
            if len(nodes) == 2 and gpus == GPUS:
                return
        except Exception as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"the Ray cluster did not come up: {last}")


def stop_cluster(cluster: RayCluster) -> None:
    """Stop this cluster's processes: SIGTERM, then SIGKILL after a few seconds.  Blocks <= ~5 s.

    Job drivers run in sessions of their own, but Ray kills them when their supervisor dies.
    """
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 3.0)):
        for pid in cluster.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _alive(cluster.pids()) and time.monotonic() < deadline:
            time.sleep(0.1)


def _alive(pids: set[int]) -> bool:
    """Whether any of ``pids`` still runs (zombies do not count)."""
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


def loopback_violations(cluster: RayCluster) -> tuple[list[str], int]:
    """(``ss -ltnp`` lines of this cluster's listeners not on loopback, how many it has)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    pids = cluster.pids()
    bad, ours = [], 0
    for line in out.splitlines():
        fields = line.split()
        owners = {int(pid) for pid in re.findall(r"pid=(\d+),", line)}
        if len(fields) < 4 or not owners & pids:
            continue
        ours += 1
        local = fields[3].rsplit(":", 1)[0]
        if local not in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"):
            bad.append(line)
    return bad, ours
