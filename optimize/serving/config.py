"""What `optimize serve` is asked for: one frozen record the CLI fills and the deployment reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from optimize.errors import InputError
from optimize.serving import ingress
from optimize.serving.batching import BatchLimits


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    #: replicas per bundle; with max_replicas above it, Ray Serve autoscales between the two
    replicas: int = 1
    max_replicas: int | None = None
    batching: BatchLimits = field(default_factory=BatchLimits)
    #: ONNX Runtime threads per replica (0: this machine's cores shared among the replicas)
    threads: int = 0
    #: Ray CPUs each replica reserves (None: its threads, at least 1)
    replica_cpus: float | None = None
    #: a running Ray cluster to deploy onto (None: a local Ray runtime started for this server)
    address: str | None = None
    #: texts one request may carry
    max_texts: int = 512
    #: bytes one request body may have
    max_body_bytes: int = 16 * 1024 * 1024
    #: seconds a request may wait for its answer before it gets a 503
    request_timeout_s: float = 60.0
    #: what takes the requests to the replicas: Ray Serve's proxy ("ray") or, on the local
    #: runtime, its direct ingress behind HAProxy ("haproxy"; ingress.py)
    ingress: str = "ray"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise InputError(f"--port must be between 1 and 65535, got {self.port}", "pass e.g. --port 8000")
        if self.replicas < 1:
            raise InputError(f"--replicas must be at least 1, got {self.replicas}", "pass e.g. --replicas 2")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise InputError(f"--max-replicas ({self.max_replicas}) is below --replicas ({self.replicas})", "pass a --max-replicas of at least --replicas")
        if self.threads < 0:
            raise InputError(f"--threads must be 0 or more, got {self.threads}", "pass 0 for the cores shared among the replicas")
        if self.max_texts < 1:
            raise InputError(f"--max-texts must be at least 1, got {self.max_texts}", "pass e.g. --max-texts 512")
        ingress.check(self.ingress, self.address)
