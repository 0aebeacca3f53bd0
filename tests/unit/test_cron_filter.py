"""cron_field_errors: a backup schedule cron cannot parse is refused before any change."""
import pytest

from ansible_collections.keelson.stack.plugins.filter.cron import cron_field_errors, field_error


@pytest.mark.parametrize("kind,value", [
    ("minute", "15"), ("minute", "*/15"), ("minute", "0,30"), ("hour", "*/6"), ("hour", "1-5/2"),
    ("hour", "*"), ("weekday", "mon-fri"), ("weekday", "7"), ("weekday", "sun"), ("month", "jan,jul"),
    ("day", "1-31"), ("hour", 2),
])
def test_what_cron_accepts(kind, value):
    assert field_error(kind, value) is None


@pytest.mark.parametrize("kind,value,why", [
    ("hour", "24", "24 is outside 0-23"),
    ("minute", "every 6 hours", "one cron field without spaces"),
    ("hour", "*/0", "step in '*/0' must be at least 1"),
    ("hour", "6-2", "range '6-2' runs backwards"),
    ("weekday", "funday", "'funday' is not a weekday"),
    ("minute", "", "one cron field"),
    ("hour", "*/6 *", "one cron field"),
    ("minute", "1,,2", "'' is not *, a number"),
])
def test_what_cron_refuses(kind, value, why):
    assert why in field_error(kind, value)


def test_errors_name_the_variable():
    errors = cron_field_errors({"backup_cron_backup_minute": ["minute", "15"],
                                "backup_cron_backup_hour": ["hour", "25"],
                                "backup_cron_verify_weekday": ["weekday", "8"]})
    assert errors == ["backup_cron_backup_hour '25': 25 is outside 0-23",
                      "backup_cron_verify_weekday '8': 8 is outside 0-7"]
