"""The bundles on Ray Serve: one application per bundle, its replicas each running app.py's API.

With no ``address`` a local Ray runtime is started for this server (and stopped with it); with
one, the applications are deployed onto that cluster (the bundle folders must be at the same
path on its nodes, with this package installed there) and deleted again when the server stops.
One bundle is served at the root (``/v1/embeddings``) and under its name; several bundles each
under their folder's name (``/<name>/v1/embeddings``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimize import ray_runtime
from optimize.errors import BuildError, InputError
from optimize.serving import ingress
from optimize.serving.config import ServeConfig


@dataclass(frozen=True)
class Route:
    """One bundle's application: where it answers and with what."""

    bundle: Path
    name: str  # the application's name and route prefix
    task: str
    prefixes: tuple[str, ...]  # inside the app: "" and, for a single bundle served at the root, "/<name>"
    route_prefix: str  # where Ray Serve mounts the app

    def url(self, cfg: ServeConfig) -> str:
        base = f"http://{cfg.host}:{cfg.port}"
        return base + ("" if self.route_prefix == "/" else self.route_prefix)


def routes(bundles: Sequence[Path]) -> list[Route]:
    """Check every bundle is servable (before any Ray starts) and name its route."""
    from optimize.bundle import check_recorded_file, read_bundle
    from optimize.serving.app import SERVABLE_TASKS

    if not bundles:
        raise InputError("no bundle to serve", "pass one or more bundle folders written by `optimize export`")
    out: list[Route] = []
    for path in bundles:
        bundle = read_bundle(Path(path))
        check_recorded_file(bundle)
        task = str(bundle.manifest.get("task", "feature-extraction"))
        if task not in SERVABLE_TASKS:
            raise InputError(
                f"bundle {path} is a {task} bundle, which `optimize serve` does not serve",
                f"serve a {', '.join(SERVABLE_TASKS)} bundle, or run this one with `optimize run`",
            )
        if bundle.manifest.get("runtime") == "tensorrt":
            from optimize.runtimes import tensorrt

            reason = tensorrt.unavailable()
            if reason:
                raise BuildError(f"cannot serve TensorRT bundle {path} here: {reason}", "serve it on its GPU machine, or export an ort-* target")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).resolve().name).strip("-") or "bundle"
        if any(r.name == name for r in out):
            raise InputError(f"two bundles are named {name}", "serve bundles from folders with different names")
        out.append(Route(Path(path).resolve(), name, task, ("",), f"/{name}"))
    if len(out) == 1:  # one bundle: at the root, where clients expect /v1/embeddings, and under its name
        only = out[0]
        out = [Route(only.bundle, only.name, only.task, ("", f"/{only.name}"), "/")]
    return out


def check_port_free(host: str, port: int) -> None:
    """A port already taken is a one-line error before Ray starts, not a proxy that dies later."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise InputError(f"port {port} on {host} is in use", "stop the program that holds it or pass another --port") from None
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})", "pass a --host of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None


def replica_threads(cfg: ServeConfig, bundles: int) -> int:
    """--threads, or this machine's physical cores shared among every replica it will run."""
    if cfg.threads > 0:
        return cfg.threads
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, cores // (cfg.replicas * bundles))


def _deployment() -> Any:
    """The Ray Serve deployment class (built on first use: Ray is imported only to serve)."""
    from ray import serve

    @serve.deployment
    @serve.ingress()
    class BundleServer:
        def __init__(self, bundle: str, prefixes: tuple[str, ...], cfg: ServeConfig, threads: int) -> None:
            from ray import serve as ray_serve

            from optimize.serving.app import BundleService

            context = ray_serve.get_replica_context()
            self.service = BundleService(
                Path(bundle),
                cfg.batching,
                threads=threads,
                max_texts=cfg.max_texts,
                max_body_bytes=cfg.max_body_bytes,
                request_timeout_s=cfg.request_timeout_s,
                replica=str(getattr(getattr(context, "replica_id", None), "unique_id", "")) or None,
            )
            self.prefixes = prefixes

        def __serve_build_asgi_app__(self) -> Any:
            from optimize.serving.app import build_app

            return build_app(self.service, self.prefixes)

    return BundleServer


class Server:
    """The running server: started by ``start``, stopped (drained) by ``stop``."""

    def __init__(self, cfg: ServeConfig, routes: list[Route], owns_ray: bool, resources: ExitStack) -> None:
        self.cfg = cfg
        self.routes = routes
        self.owns_ray = owns_ray
        self.resources = resources  # what goes after Ray: the ingress's files

    def stop(self) -> None:
        """Drain and stop: Ray Serve lets replicas finish the requests they hold (their graceful
        shutdown), then the applications go; a local Ray runtime goes with them."""
        import ray
        from ray import serve

        try:
            # each application deleted drains its replicas; a local runtime then goes whole with
            # ray.shutdown. (serve.shutdown() here printed Ray's "(raylet) Task
            # ServeController.graceful_shutdown failed ... killed by ray.kill" on every clean stop.)
            for route in self.routes:
                try:
                    serve.delete(route.name)
                except Exception:
                    if not self.owns_ray:  # on a cluster what is left keeps running: say so
                        raise
                    # our own runtime: ray.shutdown below takes whatever is left (a start that
                    # failed half-way may have no Serve to delete from)
        finally:
            try:
                if ray.is_initialized():
                    ray.shutdown()
            finally:
                self.resources.close()


def start(bundles: Sequence[Path], cfg: ServeConfig, note: Callable[[str], None] = lambda _: None) -> Server:
    """Start Ray (or join ``cfg.address``), deploy every bundle and wait until each answers."""
    planned = routes(bundles)
    if cfg.address is None:
        check_port_free(cfg.host, cfg.port)
    threads = replica_threads(cfg, len(planned))
    replica_cpus = cfg.replica_cpus if cfg.replica_cpus is not None else float(threads)
    most = (cfg.max_replicas or cfg.replicas) * len(planned)

    note("starting Ray" if cfg.address is None else f"connecting to Ray at {cfg.address}")
    resources = ExitStack()
    # before Ray starts: its processes read the ingress's switches from the environment they inherit
    resources.enter_context(ingress.environment(cfg.ingress))
    try:
        # Ray Serve's warnings still print (an existing Serve on a cluster ignoring our HTTP options)
        if cfg.address is None:
            ray_runtime.start_local("optimize serve", num_cpus=max(os.cpu_count() or 1, int(most * replica_cpus + 0.999)), logging_level=logging.WARNING)
        else:
            ray_runtime.join("optimize serve", cfg.address, or_local=True, logging_level=logging.WARNING)
    except BaseException:
        resources.close()
        raise
    server = Server(cfg, planned, owns_ray=cfg.address is None, resources=resources)
    try:
        from ray import serve

        # Ray Serve logs at INFO on its own logger, whatever ray.init was told; its warnings still show
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        # request_timeout_s: the proxy answers 408 rather than let a client hang on a lost request
        serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + 30})
        server_class = _deployment()
        apps: list[tuple[Route, Any]] = []
        for route in planned:
            options: dict[str, Any] = {
                "name": route.name,
                "ray_actor_options": {"num_cpus": replica_cpus},
                # enough requests in one replica at once to fill its batches
                "max_ongoing_requests": max(64, 4 * cfg.batching.max_batch_size),
                "graceful_shutdown_timeout_s": cfg.request_timeout_s,
                "graceful_shutdown_wait_loop_s": 0.5,
                "health_check_period_s": 2.0,
            }
            if cfg.max_replicas and cfg.max_replicas > cfg.replicas:
                options["autoscaling_config"] = {
                    "min_replicas": cfg.replicas,
                    "max_replicas": cfg.max_replicas,
                    "target_ongoing_requests": max(2, cfg.batching.max_batch_size),
                }
            else:
                options["num_replicas"] = cfg.replicas
            note(f"deploying {route.name} ({route.task}), {cfg.replicas} replica(s) of {threads} thread(s)")
            apps.append((route, server_class.options(**options).bind(str(route.bundle), route.prefixes, cfg, threads)))
        if hasattr(serve, "run_many"):  # every bundle's replicas start at once (Ray >= 2.45)
            serve.run_many([serve.RunTarget(app, name=route.name, route_prefix=route.route_prefix) for route, app in apps])
        else:
            for route, app in apps:
                serve.run(app, name=route.name, route_prefix=route.route_prefix)
    except BaseException as exc:
        server.stop()
        if isinstance(exc, (KeyboardInterrupt, InputError, BuildError)):
            raise
        raise BuildError(f"the server did not start ({_reason(exc)})", "re-run with OPTIMIZE_DEBUG=1 and read the Ray logs under /tmp/ray") from exc
    return server


def _reason(exc: BaseException) -> str:
    """Why a start failed, in one line: the error a Ray task raised (not Ray's wrapper of it, whose
    own first 200 characters are the actor's name and address), and of a program's output its
    alerts (HAProxy prints its version and paths before the line that says what went wrong)."""
    cause = exc
    while isinstance(getattr(cause, "cause", None), BaseException):  # ray.exceptions.RayTaskError
        cause = cause.cause
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).splitlines() if line.strip()]  # Ray colours its errors
    alerts = [re.sub(r"^\[ALERT\]\s*(\(\d+\))?\s*:\s*", "", line) for line in lines[1:] if line.startswith("[ALERT]")]
    head = lines[0] if lines else ""
    if alerts:
        head = head.split("[NOTICE]")[0].split("[WARNING]")[0].strip() + " " + alerts[0]
    return f"{cause.__class__.__name__}: {head[:300]}"


def _stop_on_signals(sigterm: Any) -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread, so the server drains. A
    server started in the background by a shell inherits SIGINT ignored. ``sigterm``: the handler
    the command had (the CLI's, whose error line then says "terminated"), or None for ours."""
    import threading

    from optimize.errors import TERMINATED, Terminated

    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers (start() called from a library user's thread)

    def terminated(signum: int, frame: object) -> None:
        raise Terminated(TERMINATED)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, sigterm if callable(sigterm) else terminated)


def serve_forever(bundles: Sequence[Path], cfg: ServeConfig, note: Callable[[str], None], ready: Callable[[Server], None]) -> None:
    """Start, report, then wait for Ctrl-C (or SIGTERM) and drain."""
    sigterm = signal.getsignal(signal.SIGTERM)
    _stop_on_signals(sigterm)
    server = start(bundles, cfg, note)
    _stop_on_signals(sigterm)  # in case Ray Serve put a handler of its own in place while deploying
    try:
        ready(server)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        note("stopping: draining in-flight requests")
    finally:
        server.stop()
