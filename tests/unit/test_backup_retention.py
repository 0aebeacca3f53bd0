"""GFS selection against an independent brute-force model on simulated histories."""
import datetime
import random

import pytest

from ansible_collections.keelson.stack.plugins.module_utils.backup_retention import select_retention

UTC = datetime.timezone.utc
START = datetime.datetime(2025, 10, 1, 2, 15, tzinfo=UTC)


def reference_keep(backups, daily, weekly, monthly, last=0):
    """Walks the calendar backwards one bucket at a time (days, Mondays, first
    of months) from the newest backup and keeps the newest backup found in each
    of the first N buckets that hold any backup. Independent of bucket keys."""
    times = {b["id"]: b["time"] for b in backups}
    if not times:
        return set()
    newest_id = max(times, key=lambda i: (times[i], i))
    keep = {newest_id}
    keep.update(sorted(times, key=lambda i: (times[i], i), reverse=True)[:last])
    newest_day = times[newest_id].date()
    oldest_day = min(times.values()).date()

    def newest_in(lo, hi):
        inside = [i for i, t in times.items() if lo <= t.date() < hi]
        return max(inside, key=lambda i: (times[i], i)) if inside else None

    day, found = newest_day, 0
    while found < daily and day >= oldest_day:
        pick = newest_in(day, day + datetime.timedelta(days=1))
        if pick:
            keep.add(pick)
            found += 1
        day -= datetime.timedelta(days=1)

    monday, found = newest_day - datetime.timedelta(days=newest_day.weekday()), 0
    while found < weekly and monday + datetime.timedelta(days=7) > oldest_day:
        pick = newest_in(monday, monday + datetime.timedelta(days=7))
        if pick:
            keep.add(pick)
            found += 1
        monday -= datetime.timedelta(days=7)

    first, found = newest_day.replace(day=1), 0
    while found < monthly and first <= newest_day and (first.year, first.month) >= (oldest_day.year, oldest_day.month):
        following = (first + datetime.timedelta(days=32)).replace(day=1)
        pick = newest_in(first, following)
        if pick:
            keep.add(pick)
            found += 1
        first = (first - datetime.timedelta(days=1)).replace(day=1)
    return keep


def history(days, rng, per_day=(1,), skip=0.0):
    """A simulated history: `days` days from START, some days skipped (failed
    nights), some with several backups (every 6 hours)."""
    backups = []
    for offset in range(days):
        if rng.random() < skip:
            continue
        for n in range(rng.choice(per_day)):
            when = START + datetime.timedelta(days=offset, hours=6 * n, minutes=rng.randrange(60))
            backups.append({"id": when.strftime("%Y%m%dT%H%M%SZ"), "time": when})
    return backups


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("policy", [(30, 12, 12), (7, 4, 6), (0, 0, 0), (1, 0, 0), (0, 5, 0), (0, 0, 14), (400, 60, 14),
                                    (7, 4, 6, 8), (0, 0, 0, 3), (0, 0, 0, 5000)])
def test_matches_reference_on_400_days(seed, policy):
    rng = random.Random(seed)
    backups = history(400, rng, per_day=(1, 1, 1, 2, 4), skip=0.15)
    rng.shuffle(backups)
    got = select_retention(backups, *policy)
    assert set(got["keep"]) == reference_keep(backups, *policy)
    assert set(got["keep"]) | set(got["delete"]) == {b["id"] for b in backups}
    assert not set(got["keep"]) & set(got["delete"])


def test_standard_policy_on_a_clean_daily_history():
    backups = history(400, random.Random(1))
    got = select_retention(backups, daily=30, weekly=12, monthly=12)
    # 30 days, then weeks older than those days, then months older than those weeks.
    assert 30 + 12 - 5 <= len(got["keep"]) <= 30 + 12 + 12
    newest = max(backups, key=lambda b: b["time"])
    assert got["keep"][0] == newest["id"]
    assert got["reasons"][newest["id"]][0] == "newest"
    assert len(set(b["time"].strftime("%Y-%m") for b in backups if b["id"] in got["keep"])) == 12


@pytest.mark.parametrize("seed", range(20))
def test_newest_is_never_deleted(seed):
    rng = random.Random(seed)
    backups = history(rng.randrange(1, 60), rng, per_day=(1, 3), skip=0.5) or history(1, rng)
    newest = max(backups, key=lambda b: (b["time"], b["id"]))
    got = select_retention(backups, daily=0, weekly=0, monthly=0)
    assert got["keep"] == [newest["id"]]
    assert newest["id"] not in got["delete"]


def test_iso_strings_with_zone_and_week_across_new_year():
    backups = [{"id": "a", "time": "2026-12-31T23:00:00Z"},   # ISO week 2026-W53
               {"id": "b", "time": "2027-01-01T01:00:00Z"},   # same ISO week, later: kept
               {"id": "c", "time": "2026-12-28T01:00:00+02:00"}]
    got = select_retention(backups, weekly=1)
    assert got["keep"] == ["b"]
    assert got["delete"] == ["a", "c"]
    # A non-UTC offset is bucketed in UTC: 2027-01-01T00:30+02:00 is still 2026-12-31.
    got = select_retention([{"id": "x", "time": "2027-01-01T00:30:00+02:00"},
                            {"id": "y", "time": "2026-12-31T10:00:00Z"}], daily=2)
    assert got["keep"] == ["x"]


def test_last_keeps_the_newest_backups_of_one_day():
    backups = [{"id": "t%02d" % hour, "time": START.replace(hour=hour)} for hour in (0, 6, 12, 18)]
    got = select_retention(backups, daily=1, last=2)
    assert got["keep"] == ["t18", "t12"]
    assert got["delete"] == ["t06", "t00"]
    assert got["reasons"] == {"t18": ["newest", "last 1", "daily 2025-10-01"], "t12": ["last 2"]}


def test_empty_history():
    assert select_retention([], 30, 12, 12) == {"keep": [], "delete": [], "reasons": {}}


@pytest.mark.parametrize("bad", [
    [{"id": "a", "time": "2026-01-01T00:00:00"}],               # no zone
    [{"id": "a", "time": "yesterday"}],
    [{"id": "a", "time": "2026-01-01T00:00:00Z"}, {"id": "a", "time": "2026-01-02T00:00:00Z"}],
])
def test_rejects_ambiguous_input(bad):
    with pytest.raises(ValueError):
        select_retention(bad, daily=1)


def test_rejects_negative_counts():
    with pytest.raises(ValueError):
        select_retention([], daily=-1)
    with pytest.raises(ValueError):
        select_retention([], last=-1)


def test_filter_plugin_wraps_the_same_function():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.keelson.stack.plugins.filter.retention import FilterModule

    gfs = FilterModule().filters()["gfs_retention"]
    backups = history(40, random.Random(3))
    assert gfs(backups, daily=7, weekly=4) == select_retention(backups, daily=7, weekly=4)
    assert gfs(backups, last=3) == select_retention(backups, last=3)
    with pytest.raises(AnsibleFilterError):
        gfs([{"id": "a"}], daily=1)
