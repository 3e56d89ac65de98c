"""``optimize bench --address ... --each-node``: the same benchmark once on every node of a Ray
cluster, each node timing its own copy of the bundles, the results merged as ``--merge`` does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from optimize import ray_runtime
from optimize.bundle import folder_bytes, read_bundle, write_folder_bytes
from optimize.config import BenchConfig
from optimize.errors import InputError


def _bench_here(bundles: list[tuple[str, dict[str, bytes]]], cfg: BenchConfig) -> dict[str, Any]:
    """On the node: write the bundles to a temporary folder (their names kept), time them there."""
    import tempfile

    from optimize.bench.run import run_bench

    with tempfile.TemporaryDirectory(prefix="optimize-bench-") as tmp:
        for name, files in bundles:
            write_folder_bytes(Path(tmp) / name, files)
        return run_bench([Path(tmp) / name for name, _ in bundles], cfg).as_dict()


def bench_each_node(bundle_paths: list[Path], cfg: BenchConfig, address: str) -> list[dict[str, Any]]:
    """One optimize-bench/1 result per live node, in node order. Nodes run at once: each is its own
    machine; a node times one benchmark at a time (this call holds one CPU there for it)."""
    if not bundle_paths:
        raise InputError("no bundle given", "pass one or more bundle folders written by `optimize export`")
    shipped = [(read_bundle(p).path.name, folder_bytes(Path(p))) for p in bundle_paths]
    ray_runtime.join("optimize bench --each-node", address, or_local=False)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        nodes = ray_runtime.nodes_with(min_cpus=1)
        if not nodes:
            raise InputError(f"the Ray cluster at {address} has no live node with a CPU", "check it with `ray status`")
        task = ray.remote(_bench_here)
        refs = [task.options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(shipped, cfg) for node in nodes]
        results = ray.get(refs)
    finally:
        ray.shutdown()
    for node, result in zip(nodes, results):
        # the merged table's columns are named by CPU: the node id tells apart nodes of one kind
        result["fingerprint"] = {**result["fingerprint"], "ray_node": node, "cpu": f"{result['fingerprint']['cpu']} [node {node[:8]}]"}
        result["config"] = {**result["config"], **dataclasses.asdict(cfg), "threads": result["config"]["threads"]}
    return results
