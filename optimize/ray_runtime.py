"""Ray for the commands that run on it (``optimize tune``, ``optimize serve``, ``optimize bench
--each-node``): a local runtime of the command's own, or the cluster at ``--address``.

All three start and join Ray here, so they fail alike (one line naming the fix) and wait alike:
- A local runtime is started with address "local": neither RAY_ADDRESS nor a cluster someone
  started with `ray start` on this machine is joined by accident (plain ``ray.init()`` joins both,
  and then refuses the CPU count it was given).
- A busy 2-core machine (load 15-30) brings a local runtime up in more than Ray's fixed 30 s
  waits; ``patient_startup`` stretches them rather than refuse to start.
- An address where nothing listens is found by one TCP connection, at once: Ray itself retries
  its GCS connection for more than ten minutes before it gives up.
- ``ray.init`` puts its own SIGTERM handler in place (``sys.exit(15)`` at once, Ray's processes
  left behind, nothing rolled back); the command's own handler is put back after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from optimize.errors import TERMINATED, BuildError, InputError, Terminated

#: seconds a local runtime may take to come up. Ray waits 30 s for its raylet to register, and the
#: raylet 30 s for its metrics agent to write its port; on a loaded 2-core machine (load 15-30)
#: both took longer and the raylet aborted, and a command that refused to start there would be
#: worse than one that starts late
STARTUP_PATIENCE_S = 240

#: how long a cluster's address may take to accept a TCP connection
ADDRESS_PROBE_TIMEOUT_S = 5.0

#: Ray's own logging stays out of the command's output (its processes' logs are under /tmp/ray);
#: ``logging_level`` says from which level the driver's Ray loggers still print
_QUIET: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True}


def require_ray(command: str) -> None:
    """An InputError naming the extra to install when Ray is missing."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError(f"{command} runs on Ray, which is not installed here", "pip install 'optimize[ray]'") from None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def patient_startup() -> Iterator[None]:
    """Ray nodes started inside get their agents' ports chosen up front (RayParams'
    metrics_agent_port and runtime_env_agent_port, which the raylet then does not wait for), and
    node.py's fixed 30 s wait for the raylet to register is stretched to STARTUP_PATIENCE_S by
    retrying the lookup it polls (ray._private.services.get_node)."""
    from ray._private import parameter, services

    original_lookup, original_init = services.get_node, parameter.RayParams.__init__
    deadline = time.monotonic() + STARTUP_PATIENCE_S

    def get_node(*args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                return original_lookup(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if not self.metrics_agent_port:
            self.metrics_agent_port = _free_port()
        if not self.runtime_env_agent_port:
            self.runtime_env_agent_port = _free_port()

    services.get_node, parameter.RayParams.__init__ = get_node, init
    try:
        yield
    finally:
        services.get_node, parameter.RayParams.__init__ = original_lookup, original_init


@contextlib.contextmanager
def _keeping_sigterm() -> Iterator[None]:
    """The SIGTERM handler in place before ``ray.init`` is put back after it; a SIGTERM that lands
    inside (Ray's handler: SystemExit(15)) is answered by that handler, as anywhere else."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread has handlers (and ray.init sets none elsewhere)
        return
    ours = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        signal.signal(signal.SIGTERM, ours)
        if callable(ours):
            ours(signal.SIGTERM, None)  # the CLI's: records the signal and raises Terminated
        raise Terminated(TERMINATED) from None
    finally:
        signal.signal(signal.SIGTERM, ours if ours is not None else signal.SIG_DFL)


def _ray_defaults() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the raylet waits this long for its agent before giving up (Ray's default is tight on a loaded machine)
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")


def start_local(command: str, num_cpus: int, logging_level: int = logging.ERROR) -> None:
    """A local Ray runtime of ``num_cpus`` CPUs, owned by this process (ray.shutdown stops it)."""
    require_ray(command)
    import ray

    _ray_defaults()
    try:
        with patient_startup(), _keeping_sigterm():
            ray.init(address="local", num_cpus=num_cpus, logging_level=logging_level, **_QUIET)
    except BaseException as exc:
        ray.shutdown()  # Ctrl-C or a failure half-way through: stop the processes it had started
        if not isinstance(exc, Exception):
            raise
        raise BuildError(f"the local Ray runtime did not start: {' '.join(str(exc).split())[:200]}",
                         "retry on a less loaded machine (Ray's logs are under /tmp/ray), or start one with `ray start --head` and pass --address") from None


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of "host:port" or "ray://host:port"; None for forms Ray resolves itself ("auto")."""
    bare = address.strip().removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdecimal():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _answers(host: str, port: int) -> str | None:
    """None when something accepts a TCP connection at host:port, else why not. Ray connects to
    this node's address where it is given localhost, so both are tried then."""
    hosts = [host]
    with contextlib.suppress(Exception):
        from ray._private.services import resolve_ip_for_localhost

        hosts.append(resolve_ip_for_localhost(host))
    reason = ""
    for candidate in dict.fromkeys(hosts):
        try:
            socket.create_connection((candidate, port), timeout=ADDRESS_PROBE_TIMEOUT_S).close()
            return None
        except (OSError, ValueError) as exc:  # ValueError: a name IDNA cannot encode (UnicodeError)
            reason = reason or getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return reason.lower()


def join(command: str, address: str, or_local: bool, logging_level: int = logging.ERROR) -> None:
    """Connect this process to the cluster at ``address``; ``or_local``: the command could start a
    local runtime instead, and the error's fix says so."""
    require_ray(command)
    import ray

    fix = "check --address (host:6379, or ray://host:10001 for Ray Client; `ray status` on the head node shows it)"
    if or_local:
        fix += ", or drop it for a local runtime"
    where = _host_port(address)
    if where is not None and (reason := _answers(*where)) is not None:
        raise InputError(f"cannot join the Ray cluster at {address}: nothing answers there ({reason})", fix)
    _ray_defaults()
    try:
        with _keeping_sigterm():
            ray.init(address=address, logging_level=logging_level, **_QUIET)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError, its own RayError
        ray.shutdown()
        first_line = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise InputError(f"cannot join the Ray cluster at {address}: {first_line[:200]}", fix) from None


def nodes_with(min_cpus: float, labels: tuple[tuple[str, str], ...] = (), resource: str | None = None) -> list[str]:
    """Ids of the live nodes of the joined cluster with ``min_cpus`` CPUs, every label and the resource."""
    import ray

    chosen = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources") or {}
        node_labels = node.get("Labels") or {}
        if resources.get("CPU", 0) < min_cpus or (resource and resource not in resources):
            continue
        if any(node_labels.get(k) != v for k, v in labels):
            continue
        chosen.append(node["NodeID"])
    return chosen
