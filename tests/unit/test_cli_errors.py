"""The CLI's last line of defence, in process: a bug is one `internal error:` line, and an
interrupt that lands inside a __del__ still stops the command with its one line."""

from __future__ import annotations

import os
import signal
import time

import pytest

import optimize.api as api
from optimize import cli
from optimize.errors import Terminated


def _run(capsys) -> tuple[int, str]:
    code = cli.main(["export", "bert", "--output", "/tmp/optimize-cli-test-never-written", "--no-speed"])
    return code, capsys.readouterr().err


def test_an_unexpected_exception_is_one_internal_error_line(monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(api, "export_model", bug)
    code, err = _run(capsys)
    assert code == 1
    assert err.startswith("internal error: ValueError: a bug") and err.count("\n") == 1 and "Traceback" not in err


def test_an_interrupt_inside_a_destructor_is_delivered_again(monkeypatch, capsys):
    def export_with_a_noisy_destructor(*args, **kwargs):
        class Finalized:
            def __del__(self):
                raise Terminated("terminated by SIGTERM; test")

        Finalized()
        time.sleep(2)  # the re-delivered SIGTERM arrives here
        pytest.fail("the interrupt was swallowed")

    monkeypatch.setattr(api, "export_model", export_with_a_noisy_destructor)
    code, err = _run(capsys)
    assert code == 130 and err.startswith("error: terminated by SIGTERM") and "Traceback" not in err


def test_sigterm_is_not_swallowed_by_a_librarys_catch_all(monkeypatch, capsys):
    """torch.onnx's op registry catches Exception, logs it with a traceback and carries on: a
    SIGTERM raised as an Exception there was lost and the export finished anyway."""

    def export_inside_a_catch_all(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)
        except Exception:  # noqa: BLE001 - what the library does
            pass
        pytest.fail("the SIGTERM was swallowed")

    monkeypatch.setattr(api, "export_model", export_inside_a_catch_all)
    code, err = _run(capsys)
    assert code == 130
    assert err == "error: terminated by SIGTERM; nothing was written and any previous bundle is intact\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bench", "--serve", "http://127.0.0.1:1", "--concurrency", "1,,2"], "error: --concurrency has an empty entry in '1,,2'"),
        (["bench", "--batch", "8,", "some-bundle"], "error: --batch has an empty entry in '8,'"),
        (["bench", "some-bundle", "--serve", "http://127.0.0.1:1"], "error: --serve load-tests a running server, so the bundle some-bundle"),
        (["serve"], "error: Missing argument 'bundles'; see `optimize serve --help`"),
        (["serve", "some-bundle", "--ingress", "nginx"], "error: unknown --ingress 'nginx'; pass one of: ray, haproxy"),
        (["serve", "some-bundle", "--ingress", "haproxy", "--address", "ray://head:10001"], "error: --ingress haproxy starts HAProxy with the local Ray runtime"),
    ],
)
def test_bench_and_serve_refuse_what_they_would_silently_misread(argv, expected, capsys, tmp_path, monkeypatch):
    """A lost list entry was skipped, a bundle beside --serve ignored, and click's message kept
    its full stop before our "; see" tail: each now one exact line, before any work."""
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "bench-out").exists()


@pytest.mark.parametrize("becomes", ["InputError", "ImportError"])
def test_an_interrupt_a_library_turned_into_another_error_is_still_an_interrupt(becomes, monkeypatch, capsys):
    """A native module interrupted while it loads raises ImportError "initialization failed", and
    the model loader wraps that in its own error: the user pressed Ctrl-C and must read so."""
    from optimize.errors import InputError

    def export_whose_library_converts_the_interrupt(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        except KeyboardInterrupt as exc:
            if becomes == "InputError":
                raise InputError("could not load the model in m: initialization failed", "check the folder") from exc
            raise ImportError("initialization failed") from exc
        pytest.fail("the SIGINT was not delivered")

    monkeypatch.setattr(api, "export_model", export_whose_library_converts_the_interrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal has it
    try:
        code, err = _run(capsys)
        handed_back = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and err.startswith("error: interrupted") and err.count("\n") == 1, err
    assert handed_back is signal.default_int_handler  # main hands Ctrl-C back as it found it
