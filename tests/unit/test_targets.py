import pytest

from optimize.errors import InputError
from optimize.targets import TARGETS, get_target


def test_every_issue_target_is_registered():
    assert {"ort-fp32", "ort-int8", "ort-fp16", "trt-fp16", "trt-int8"} <= set(TARGETS)


def test_unknown_target_suggests_the_nearest():
    with pytest.raises(InputError) as caught:
        get_target("ort-fp23")
    assert "did you mean ort-fp32?" in str(caught.value)
