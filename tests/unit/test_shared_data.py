"""A missing ../shared data file skips a test on a developer's checkout and fails it under CI."""

from __future__ import annotations

import pytest

from shared_data import require_shared_file


def test_a_present_file_is_returned(tmp_path):
    present = tmp_path / "data.csv"
    present.write_text("split,label,text\n")
    assert require_shared_file(present) == present


@pytest.mark.parametrize("ci", ["", "false", "0"])
def test_a_missing_file_skips_outside_ci(ci, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="is not beside the checkout"):
        require_shared_file(tmp_path / "missing.csv")


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_a_missing_file_fails_under_ci(ci, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_shared_file(tmp_path / "missing.csv")
