"""Starting and joining Ray, as tune, serve and bench --each-node do: a wrong --address is one
line at once (Ray alone retries it for more than ten minutes), and a local runtime is the
command's own even where RAY_ADDRESS names another cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from cli_helpers import free_port
from optimize import ray_runtime
from optimize.cli import main
from optimize.errors import InputError


def dead_address() -> str:
    """A local port nothing listens on."""
    return f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.0.0.5:6379", ("10.0.0.5", 6379)), ("ray://head:10001", ("head", 10001)), (":6379", ("127.0.0.1", 6379)),
     ("[::1]:6379", ("::1", 6379)), (" head:6379 ", ("head", 6379)), ("auto", None), ("head", None), ("head:\u00b2", None)],
)
def test_an_address_is_read_as_host_and_port_where_it_has_them(address, expected):
    assert ray_runtime._host_port(address) == expected


@pytest.mark.parametrize("address", ["dead", "ray://dead", "a..b:6379"])
def test_joining_an_address_where_nothing_listens_fails_at_once_naming_the_fix(address):
    address = address.replace("dead", dead_address())
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        ray_runtime.join("optimize bench --each-node", address, or_local=False)
    assert time.monotonic() - started < 10
    error = caught.value
    assert error.problem.startswith(f"cannot join the Ray cluster at {address}: nothing answers there")
    assert error.fix.startswith("check --address") and "local runtime" not in error.fix


def test_tune_with_a_dead_address_is_one_line_and_exit_2(tmp_path, capsys):
    address = dead_address()
    code = main(["tune", "bert", "--goal", "cosine>=0.99", "--address", address, "--output", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(f"error: cannot join the Ray cluster at {address}: nothing answers there")
    assert err.endswith("or drop it for a local runtime") and "\n" not in err


#: run in a process of its own: every Ray runtime started and shut down inside the test process
#: is one more chance of Ray's known crash at interpreter exit (ray-project/ray#31145)
LOCAL_RUNTIME_PROBE = """
import json, signal
from optimize import ray_runtime

def commands_own(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, commands_own)
ray_runtime.start_local("optimize tune", num_cpus=1)
import ray
print(json.dumps({"handler_kept": signal.getsignal(signal.SIGTERM) is commands_own,
                  "cpus": ray.cluster_resources().get("CPU")}))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_runtime_is_started_even_where_ray_address_names_another_cluster():
    # plain ray.init(num_cpus=...) reads RAY_ADDRESS, tries to join it and refuses the CPU count
    env = {**os.environ, "RAY_ADDRESS": dead_address()}
    done = subprocess.run([sys.executable, "-c", LOCAL_RUNTIME_PROBE], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cpus"] == 1
    # ray.init's own SIGTERM handler (exit at once, nothing rolled back) is not left in place
    assert seen["handler_kept"]
