"""The deploy lock in a real temporary directory, with injected time."""
import json
import multiprocessing

import pytest

from ansible_collections.keelson.stack.plugins.module_utils.deploy_lock import (
    LockHeld, acquire, read_lock, release, status)


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now
        self.slept = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept += seconds
        self.now += seconds


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / "staging.lock")


def test_second_acquire_names_the_holder(lock_path):
    clock = Clock()
    res = acquire(lock_path, "ana@ctl run 1", "deploy api 1.4.2", ttl=1800, clock=clock)
    assert res["changed"] and res["taken_over"] is None
    on_disk = json.load(open(lock_path))
    assert on_disk["owner"] == "ana@ctl run 1" and on_disk["expires_at"] == clock.now + 1800
    with pytest.raises(LockHeld) as err:
        acquire(lock_path, "bo@ctl run 7", "rolling restart", ttl=1800, clock=clock, sleep=clock.sleep)
    assert str(err.value) == ("deploy lock held by ana@ctl run 1 since 2027-01-15T08:00:00Z "
                              "for 'deploy api 1.4.2' (expires 2027-01-15T08:30:00Z)")
    assert clock.slept == 0, "without wait, the second acquire fails at once"


def test_same_owner_renews(lock_path):
    clock = Clock()
    first = acquire(lock_path, "ana", "deploy", ttl=600, clock=clock)["lock"]
    clock.now += 300
    again = acquire(lock_path, "ana", "deploy", ttl=600, clock=clock)["lock"]
    assert again["acquired_at"] == first["acquired_at"] and again["expires_at"] == clock.now + 600


def test_stale_lock_is_taken_over(lock_path):
    clock = Clock()
    acquire(lock_path, "killed run", "deploy", ttl=600, clock=clock)
    clock.now += 601
    res = acquire(lock_path, "next run", "deploy", ttl=600, clock=clock)
    assert res["taken_over"]["owner"] == "killed run"
    assert read_lock(lock_path)["owner"] == "next run"


def test_wait_for_release_and_give_up(lock_path):
    clock = Clock()
    acquire(lock_path, "ana", "deploy", ttl=100, clock=clock)
    with pytest.raises(LockHeld):
        acquire(lock_path, "bo", "restart", ttl=100, wait=30, interval=5, clock=clock, sleep=clock.sleep)
    assert clock.slept == 30
    # the holder's lock runs out while bo waits
    clock = Clock(clock.now)
    res = acquire(lock_path, "bo", "restart", ttl=100, wait=200, interval=5, clock=clock, sleep=clock.sleep)
    assert res["taken_over"]["owner"] == "ana" and res["waited"] == 70  # expired at acquired + ttl


def test_release_is_idempotent_and_owned(lock_path):
    clock = Clock()
    acquire(lock_path, "ana", "deploy", ttl=100, clock=clock)
    with pytest.raises(LockHeld):
        release(lock_path, "bo")
    assert release(lock_path, "ana")["changed"]
    assert not release(lock_path, "ana")["changed"]
    assert status(lock_path, clock.now) == {"changed": False, "lock": None, "held": False}
    acquire(lock_path, "ana", "deploy", ttl=100, clock=clock)
    assert release(lock_path, "bo", force=True)["lock"]["owner"] == "ana"


def _contend(path, owner, start, results):
    start.wait()
    try:
        acquire(path, owner, "race", ttl=600)
        results.put(owner)
    except LockHeld:
        results.put(None)


def test_only_one_of_many_processes_wins(lock_path):
    start = multiprocessing.Event()
    results = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_contend, args=(lock_path, "run %d" % i, start, results))
             for i in range(8)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(30)
    winners = [w for w in (results.get(timeout=5) for _ in procs) if w]
    assert len(winners) == 1 and read_lock(lock_path)["owner"] == winners[0]
