import pytest

from cxrtriage.db.exports import RetryPolicy


@pytest.mark.parametrize(("base", "cap", "attempt", "expected"), [
    (5.0, 300.0, 1, 5.0),
    (5.0, 300.0, 2, 10.0),
    (5.0, 300.0, 6, 160.0),
    (5.0, 300.0, 7, 300.0),  # 320 capped
    (5.0, 300.0, 500, 300.0),  # no overflow far out
    (0.1, 0.3, 3, 0.3),
])
def test_delay_is_capped_exponential(base, cap, attempt, expected):
    assert RetryPolicy(base, cap).delay(attempt) == pytest.approx(expected)


def test_attempt_numbers_start_at_one():
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(0)
