"""Issue 15: every bad input in tests/bad_inputs.py gets a ValueError naming the argument or file and why."""

import numpy as np
import pytest
from bad_inputs import CASES

from helpers.io import load_volume, save_volume


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.category}:{c.id}")
def test_bad_input_gets_a_clear_error(case, tmp_path):
    call, names = case.make(tmp_path)
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert names in message, message
    for word in case.reason:
        assert word in message, message
    assert not list(tmp_path.rglob(".*.partial*"))


@pytest.mark.parametrize(
    ("array", "stored"),
    [
        (np.ones((3, 4, 5), bool), np.uint8),
        (np.full((3, 4, 5), 1.5, np.float16), np.float32),
        (np.full((3, 4, 5), -7, np.int64), np.int16),
        (np.full((3, 4, 5), 70_000, np.int64), np.int32),
    ],
)
@pytest.mark.parametrize("name", ["x.nii.gz", "x.tif"])
def test_save_converts_what_is_safe_and_keeps_the_values(tmp_path, array, stored, name):
    back = load_volume(save_volume(tmp_path / name, array))
    assert back.array.dtype == stored and np.array_equal(back.array, array)
