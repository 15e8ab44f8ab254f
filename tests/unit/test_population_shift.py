"""The population-shift set: every shift is deterministic, keeps the picture's size and range,
changes it, and survives the serving geometry (padding trimming must not undo it)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.models.model_input import trim_padding
from cxrtriage.models.population_shift import SHIFTS, apply_shift, shift_rng


def _picture(size: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = 0.35 + 0.3 * np.cos(6 * xx) * np.sin(4 * yy) + 0.1 * np.random.default_rng(0).random((size, size))
    return np.clip(lungs, 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("shift", SHIFTS)
def test_each_shift_is_repeatable_in_range_and_changes_the_picture(shift):
    gray = _picture()
    first = apply_shift(gray, shift, shift_rng(7, shift, "person1_bacteria_1.jpeg"))
    again = apply_shift(gray, shift, shift_rng(7, shift, "person1_bacteria_1.jpeg"))
    assert first.shape == gray.shape and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert (np.abs(first - gray) > 0.05).mean() > 0.004, "a visible part of the picture changed"


@pytest.mark.parametrize(("seed", "name"), [(8, "person1_bacteria_1.jpeg"), (7, "IM-0115-0001.jpeg")])
def test_another_seed_or_picture_draws_another_shift(seed, name):
    gray = _picture()
    base = apply_shift(gray, "rotation", shift_rng(7, "rotation", "person1_bacteria_1.jpeg"))
    other = apply_shift(gray, "rotation", shift_rng(seed, "rotation", name))
    assert not np.array_equal(base, other)


def test_the_rng_depends_on_the_file_name_not_its_folder():
    a = shift_rng(1, "lines", "/a/NORMAL/IM-0115-0001.jpeg").random()
    b = shift_rng(1, "lines", "/b/other/IM-0115-0001.jpeg").random()
    assert a == b


@pytest.mark.parametrize("seed", range(6))
def test_collimation_is_not_trimmed_away_as_padding(seed):
    gray = _picture()
    shifted = apply_shift(gray, "collimation", shift_rng(seed, "collimation", "x.jpeg"))
    assert trim_padding(shifted).shape == shifted.shape


@pytest.mark.parametrize("shift", ["markers", "lines"])
def test_burned_in_objects_are_bright(shift):
    gray = np.full((96, 96), 0.3, dtype=np.float32)
    shifted = apply_shift(gray, shift, shift_rng(3, shift, "x.jpeg"))
    assert (shifted > 0.8).sum() >= 8, "at least a few burned-in pixels"


@pytest.mark.parametrize(("shift", "error"), [("tilt", "shift must be one of"), ("rotation", "2-D")])
def test_bad_arguments_are_named(shift, error):
    gray = _picture() if shift == "tilt" else _picture()[None]
    with pytest.raises(ValueError, match=error):
        apply_shift(gray, shift, np.random.default_rng(0))
