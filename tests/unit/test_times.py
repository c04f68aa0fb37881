from datetime import UTC, datetime, timedelta, timezone

from ucim.common.times import millis, parse_rfc3339, rfc3339

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_epoch_milliseconds() -> None:
    assert millis(T0 + timedelta(milliseconds=7)) == 1_772_366_400_007


def test_rfc3339_is_utc_with_a_z_in_whole_seconds_or_milliseconds() -> None:
    moment = (T0 + timedelta(milliseconds=45, microseconds=9)).astimezone(timezone(timedelta(hours=2)))
    assert rfc3339(moment) == "2026-03-01T12:00:00Z"
    assert rfc3339(moment, fraction=True) == "2026-03-01T12:00:00.045Z"


def test_parse_rfc3339_round_trips_and_refuses_what_is_not_an_aware_time() -> None:
    assert parse_rfc3339(rfc3339(T0, fraction=True)) == T0
    assert parse_rfc3339("2026-03-01T12:00:00") is None  # no zone: not a point in time
    assert parse_rfc3339("1764000000.123") is None
    assert parse_rfc3339(None) is None
