"""`optimize serve` against real servers on 127.0.0.1 with tiny bundles.

The quick tests run the HTTP API (optimize/serving/app.py, the batcher, the metrics) under
uvicorn in a thread, without Ray: answers equal to ``optimize.load``'s, the bad-request battery,
batching visible in /metrics. The slow ones start `optimize serve` itself (Ray Serve, two
bundles, two replicas each) as a user does: the same answers through Ray, a replica killed under
load, Ctrl-C draining. Every server is stopped by its fixture; every HTTP call has a timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import optimize
from cli_helpers import assert_one_line_error, free_port, optimize as run_cli

TEXTS = [
    "A short one.",
    "John Smith flew from Paris to New York with Mary last Tuesday, and nobody at the office noticed.",
    "x",
    "Deployment compilers turn models into artifacts that run anywhere " * 16,  # past the tiny model's 128 positions
    "Héllo wörld, naïve café!",
]


def call(port: int, method: str, path: str, body: bytes | str | None = None, content_type: str | None = "application/json", timeout: float = 30) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def post(port: int, path: str, payload: object, timeout: float = 30) -> tuple[int, object]:
    status, raw = call(port, "POST", path, json.dumps(payload), timeout=timeout)
    return status, json.loads(raw)


class ThreadedServer:
    """uvicorn serving app.py's API in a thread: the replica's code without Ray."""

    def __init__(self, bundle: Path, wait_ms: float = 5.0, max_texts: int = 16) -> None:
        import uvicorn

        from optimize.serving.app import BundleService, build_app
        from optimize.serving.batching import BatchLimits

        self.port = free_port()
        service = BundleService(bundle, BatchLimits(max_batch_size=8, max_batch_tokens=4096, wait_ms=wait_ms), threads=1, max_texts=max_texts)
        app = build_app(service, ("", f"/{bundle.name}"))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def embedder(tiny_bundle) -> Iterator[ThreadedServer]:
    _, bundle = tiny_bundle("feature-extraction")
    with ThreadedServer(bundle, wait_ms=30) as server:
        yield server


def test_embeddings_equal_optimize_load(embedder, tiny_bundle):
    _, bundle = tiny_bundle("feature-extraction")
    expected = optimize.load(bundle).encode(TEXTS)

    status, body = post(embedder.port, "/v1/embeddings", {"input": TEXTS, "model": "anything"})
    assert status == 200, body
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert body["usage"]["prompt_tokens"] > 128  # the long text counts its 128 kept tokens

    status, body = post(embedder.port, f"/{bundle.name}/v1/embeddings", {"input": TEXTS[0], "encoding_format": "base64"})
    assert status == 200, body
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, expected[0], atol=1e-5)

    status, body = post(embedder.port, "/embed", {"inputs": TEXTS})  # text-embeddings-inference: normalised
    assert status == 200
    np.testing.assert_allclose(np.array(body, dtype=np.float32), optimize.load(bundle).encode(TEXTS, normalize=True), atol=1e-5)

    status, raw = call(embedder.port, "GET", "/info")
    info = json.loads(raw)
    assert status == 200 and info["task"] == "feature-extraction" and info["dimension"] == 64 and info["max_length"] == 128
    assert call(embedder.port, "GET", "/health")[0] == 200


def test_classifier_predict_equals_optimize_load(tiny_bundle):
    _, bundle = tiny_bundle("text-classification")
    expected = optimize.load(bundle).predict(TEXTS)
    with ThreadedServer(bundle) as server:
        status, body = post(server.port, "/predict", {"inputs": TEXTS})
        assert status == 200, body
        assert [b["label"] for b in body] == [e["label"] for e in expected]
        np.testing.assert_allclose([b["score"] for b in body], [e["score"] for e in expected], atol=1e-5)
        status, body = post(server.port, "/v1/embeddings", {"input": ["a"]})
        assert status == 404 and "/predict" in body["error"]["message"]  # a classifier has no embeddings route


BAD_REQUESTS = [
    # (what, body, content type, status, a fragment of the message)
    ("invalid JSON", '{"input": ["a",', "application/json", 400, "not valid JSON"),
    ("not an object", '["a"]', "application/json", 400, "JSON object"),
    ("empty body", "", "application/json", 400, "empty"),
    ("missing field", '{"text": ["a"]}', "application/json", 400, "missing field 'input'"),
    ("empty input", '{"input": []}', "application/json", 400, "empty"),
    ("empty string", '{"input": ["a", ""]}', "application/json", 400, "input[1] is an empty string"),
    ("not strings", '{"input": ["a", 3]}', "application/json", 400, "input[1] must be a string"),
    ("token ids", '{"input": 17}', "application/json", 400, "string or a list of strings"),
    ("bad truncate", '{"input": ["a"], "truncate": "no"}', "application/json", 400, "'truncate' must be true or false"),
    ("bad encoding", '{"input": ["a"], "encoding_format": "int8"}', "application/json", 400, "encoding_format"),
    ("too long, truncate false", json.dumps({"input": ["a", "word " * 300], "truncate": False}), "application/json", 413, "text 1 has"),
    ("too many texts", json.dumps({"input": ["a"] * 17}), "application/json", 413, "17 texts"),
    ("wrong content type", '{"input": ["a"]}', "text/plain", 415, "text/plain"),
    ("binary garbage", b"\xff\xfe\x00garbage", "application/json", 400, "not valid JSON"),
]


@pytest.mark.parametrize("what,body,content_type,status,fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_a_one_line_json_error_and_the_server_keeps_serving(embedder, what, body, content_type, status, fragment):
    got, raw = call(embedder.port, "POST", "/v1/embeddings", body, content_type)
    assert got == status, (what, raw)
    message = json.loads(raw)["error"]["message"]
    assert fragment in message and "\n" not in message, message
    assert post(embedder.port, "/v1/embeddings", {"input": ["still here"]})[0] == 200


def test_unknown_routes_and_methods_are_json_errors(embedder):
    for method, path, status in (("GET", "/nope", 404), ("GET", "/v1/embeddings", 405), ("POST", "/predict", 404)):
        got, raw = call(embedder.port, method, path, None, None)
        assert got == status and json.loads(raw)["error"]["message"], (method, path, raw)
    # curl -d sends application/x-www-form-urlencoded: its body is still read as the JSON it is
    assert call(embedder.port, "POST", "/v1/embeddings", '{"input": ["a", "b"]}', "application/x-www-form-urlencoded")[0] == 200


def test_concurrent_requests_are_batched_and_counted_in_metrics(embedder):
    def batch_counts() -> tuple[int, int]:
        text = call(embedder.port, "GET", "/metrics")[1].decode()
        ones = int(next(l for l in text.splitlines() if l.startswith("optimize_batch_size_bucket") and 'le="1"' in l).split()[-1])
        total = int(next(l for l in text.splitlines() if l.startswith("optimize_batch_size_count")).split()[-1])
        return ones, total

    ones_before, total_before = batch_counts()
    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def client(i: int) -> None:
        barrier.wait(timeout=30)
        # texts of one length (a letter is one token): the batcher keeps unlike lengths apart
        statuses.append(post(embedder.port, "/v1/embeddings", {"input": [f"sentence {chr(97 + i)} " * 4]})[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200] * 12
    ones, total = batch_counts()
    assert total - total_before < 12, "12 concurrent one-text requests ran as 12 batches: nothing was batched"
    assert (total - total_before) - (ones - ones_before) >= 1  # at least one batch of more than one text
    text = call(embedder.port, "GET", "/metrics")[1].decode()
    assert 'optimize_requests_total{bundle="feature-extraction"' in text and "optimize_queue_depth" in text
    assert "optimize_request_seconds_bucket" in text


def test_serve_refuses_what_it_cannot_serve_in_one_line(tiny_bundle, tmp_path):
    assert_one_line_error(run_cli("serve", str(tmp_path / "missing"), timeout=600), "does not exist", code=2)
    _, token_bundle = tiny_bundle("token-classification")
    assert_one_line_error(run_cli("serve", str(token_bundle), timeout=600), "token-classification", "does not serve", code=2)
    _, bundle = tiny_bundle("feature-extraction")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        assert_one_line_error(run_cli("serve", str(bundle), "--port", str(port), timeout=600), f"port {port}", "in use", code=2)
    # a truncated model.onnx is named before Ray starts, not met as a deployment failure
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes()[:1000])
    assert_one_line_error(run_cli("serve", str(broken), timeout=600), "model.onnx is not the file the bundle's manifest records", code=7)


# --- `optimize serve` on Ray Serve, as a user starts it ---------------------------------------


class CliServer:
    """`optimize serve` in its own process group; stopped with Ctrl-C (SIGINT), killed if it hangs."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("OPTIMIZE_DEBUG", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "optimize", "serve", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        )
        # stdout read as it comes: the server is ready when it says so, not when a route first
        # answers (behind HAProxy a replica answers before Ray Serve reports the deployment done)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=lambda lines=lines, stream=stream: lines.extend(iter(stream.readline, "")), daemon=True)
            for lines, stream in ((self.stdout, self.process.stdout), (self.stderr, self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def output(self) -> str:
        """What it printed, stdout then stderr (for an assertion's message); all of it once the
        process has ended (its last lines may still be in the pipes)."""
        if self.process.poll() is not None:
            for reader in self._readers:
                reader.join(timeout=10)
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_ready(self, paths: list[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        for path in paths:
            while True:
                assert self.process.poll() is None, self.output()
                assert time.monotonic() < deadline, f"{path} did not answer within {timeout} s; it printed: {self.output()[-3000:]}"
                try:
                    if call(self.port, "GET", path, timeout=5)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
        while not any("press Ctrl-C" in line for line in list(self.stdout)):
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"`optimize serve` did not say it was ready within {timeout} s; it printed: {self.output()[-3000:]}"
            time.sleep(0.2)

    def interrupt(self, timeout: float = 120) -> tuple[int, str, str]:
        """Ctrl-C, then its exit code and output; SIGKILL to the group if it does not stop."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            raise AssertionError(f"`optimize serve` did not stop within {timeout} s of Ctrl-C: {self.output()[-2000:]}") from None
        for reader in self._readers:
            reader.join(timeout=30)
        return self.process.returncode, "".join(self.stdout), "".join(self.stderr)


@pytest.fixture(scope="module")
def ray_server(tiny_bundle) -> Iterator[tuple[CliServer, Path, Path]]:
    _, embedder_bundle = tiny_bundle("feature-extraction")
    _, classifier_bundle = tiny_bundle("text-classification")
    server = CliServer(str(embedder_bundle), str(classifier_bundle), "--replicas", "2", "--threads", "1", "--batch-wait-ms", "20", "--max-texts", "64")
    try:
        server.wait_ready([f"/{embedder_bundle.name}/health", f"/{classifier_bundle.name}/health"])
        yield server, embedder_bundle, classifier_bundle
    finally:
        if server.process.poll() is None:
            server.interrupt()


@pytest.mark.slow
def test_ray_serve_answers_equal_optimize_load_under_each_bundles_route(ray_server):
    server, embedder_bundle, classifier_bundle = ray_server
    status, body = post(server.port, f"/{embedder_bundle.name}/v1/embeddings", {"input": TEXTS})
    assert status == 200, body
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], optimize.load(embedder_bundle).encode(TEXTS), atol=1e-5)
    status, body = post(server.port, f"/{classifier_bundle.name}/predict", {"inputs": TEXTS})
    assert status == 200, body
    assert [b["label"] for b in body] == [e["label"] for e in optimize.load(classifier_bundle).predict(TEXTS)]
    status, body = post(server.port, f"/{embedder_bundle.name}/v1/embeddings", {"input": ["a"] * 65})
    assert status == 413 and "65 texts" in body["error"]["message"]
    assert call(server.port, "GET", "/v1/embeddings")[0] == 404  # two bundles: no root route


@pytest.mark.slow
def test_a_replica_killed_under_load_loses_no_request_silently_and_comes_back(ray_server):
    server, _, bundle = ray_server
    path = f"/{bundle.name}/predict"
    outcomes: list[str] = []
    stop = time.monotonic() + 12

    def client(i: int) -> None:
        while time.monotonic() < stop:
            try:
                status, _ = call(server.port, "POST", path, json.dumps({"inputs": [f"text {i}"] * 4}), timeout=45)
                outcomes.append("ok" if status == 200 else f"{status // 100}xx" if status >= 500 else f"unexpected {status}")
            except (OSError, http.client.HTTPException) as exc:
                outcomes.append(f"no answer ({exc.__class__.__name__})")

    pids = {json.loads(call(server.port, "GET", f"/{bundle.name}/info")[1])["replica"]["pid"] for _ in range(20)}
    assert pids, "no replica told its pid"
    clients = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in clients:
        t.start()
    time.sleep(3)
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    for t in clients:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in clients), "a client hung"
    bad = [o for o in outcomes if o != "ok" and o != "5xx"]
    assert not bad, f"requests without an answer or an error status: {bad[:5]} of {len(outcomes)}"
    assert outcomes.count("ok") >= 3, {o: outcomes.count(o) for o in set(outcomes)}
    while True:  # the endpoint answers again within 30 s of the kill
        try:
            if call(server.port, "POST", path, json.dumps({"inputs": ["back?"]}), timeout=10)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() - killed_at < 30, "the endpoint did not answer again within 30 s"
        time.sleep(0.5)
    print({o: outcomes.count(o) for o in set(outcomes)}, f"answering again {time.monotonic() - killed_at:.1f} s after the kill")


@pytest.mark.slow
def test_ctrl_c_drains_in_flight_requests_and_stops(ray_server):
    server, embedder_bundle, _ = ray_server
    results: list[int] = []

    def client() -> None:
        results.append(post(server.port, f"/{embedder_bundle.name}/v1/embeddings", {"input": TEXTS * 8}, timeout=60)[0])

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    time.sleep(0.3)
    code, out, err = server.interrupt()
    for t in clients:
        t.join(timeout=60)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err and "draining" in err
    assert results == [200] * 4, results
    assert f"serving {embedder_bundle.name}" in out
    # a clean stop is quiet: no Ray task failure from serve.shutdown, no INFO lines of Ray Serve's
    # own logger (one of which read "New http_options ... will not be applied" on our own runtime)
    assert "graceful_shutdown failed" not in out + err and "INFO" not in err, (out + err)[-2000:]


def _haproxy_pids() -> set[int]:
    """HAProxy processes on this machine (Ray Serve's bundled binary or a system one)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if entry.name.isdigit() and argv0.endswith(b"/haproxy"):
            pids.add(int(entry.name))
    return pids


@pytest.mark.slow
def test_haproxy_ingress_serves_the_same_answers_side_by_side_and_leaves_nothing_behind(tiny_bundle):
    """Two `--ingress haproxy` servers at once (a comparison's pair) each get their own HAProxy,
    answer as ``optimize.load`` does through the replicas' own HTTP servers, and on Ctrl-C stop
    with their HAProxy and its files gone."""
    _, bundle = tiny_bundle("feature-extraction")
    shared = Path("/tmp/haproxy-serve")  # Ray Serve's default folder for HAProxy's files
    before, folders, shared_before = _haproxy_pids(), set(Path("/tmp").glob("osrv-*")), set(shared.glob("*"))
    servers: list[CliServer] = []
    try:
        for extra in ([], ["--max-batch-size", "1"]):
            servers.append(CliServer(str(bundle), "--ingress", "haproxy", "--threads", "1", *extra))
        for server in servers:
            server.wait_ready(["/health"])
        expected = optimize.load(bundle).encode(TEXTS)
        batch_sizes = []
        for server in servers:
            status, body = post(server.port, "/v1/embeddings", {"input": TEXTS})
            assert status == 200, body
            np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=1e-5)
            status, body = post(server.port, "/v1/embeddings", {"inputs": TEXTS})  # our JSON error, not HAProxy's page
            assert status == 400 and "missing field 'input'" in body["error"]["message"]
            batch_sizes.append(json.loads(call(server.port, "GET", "/info")[1])["batching"]["max_batch_size"])
            metrics = call(server.port, "GET", "/metrics")[1].decode()
            assert 'route="/v1/embeddings",code="200"}' in metrics, metrics[:2000]
        assert batch_sizes == [32, 1], "a server answered with the other's replica"
        assert len(_haproxy_pids() - before) >= 2, "each server should run its own HAProxy"
    finally:
        results = []
        for server in servers:  # each stopped, whatever happened to the other
            try:
                results.append(server.interrupt())
            except AssertionError as exc:
                results.append((None, "", str(exc)))
    for code, out, err in results:
        assert code == 0 and "Traceback" not in err, err[-2000:]
    deadline = time.monotonic() + 20  # Ray reaps its processes just after ray.shutdown returns
    while _haproxy_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _haproxy_pids() - before, "an HAProxy outlived its server"
    assert set(Path("/tmp").glob("osrv-*")) <= folders, "an HAProxy's files outlived their server"
    assert set(shared.glob("*")) <= shared_before, f"a server wrote into the shared {shared}"
