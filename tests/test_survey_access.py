"""The admin login's failed-attempt throttle, and the client address behind (trusted) proxies."""

from __future__ import annotations

import pytest

from dreamshot.access import Access, LoginThrottle
from dreamshot.survey.limits import RateLimiter, client_ip


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_hundred_wrong_passwords_lock_the_name_and_the_right_one_waits():
    clock = Clock()
    access = Access("s3cret-pass", throttle=LoginThrottle(free=5, base_lock=30, global_limit=1000, clock=clock))
    results = [access.check_login("bob", f"guess{i}") for i in range(100)]
    assert not any(results)
    counted = access.throttle._fails["bob"][0]
    assert counted == 5                              # after 5 failures the password is not even tried
    assert not access.check_login("bob", "s3cret-pass")   # locked: even the right password waits
    assert access.check_login("alice", "s3cret-pass")     # another name is not locked
    clock.t += 31
    assert access.check_login("bob", "s3cret-pass")       # lock over; success clears the count
    assert "bob" not in access.throttle._fails


def test_lock_grows_with_each_further_failure():
    clock = Clock()
    throttle = LoginThrottle(free=2, base_lock=10, max_lock=35, global_limit=1000, clock=clock)
    access = Access("pw", throttle=throttle)
    access.check_login("eve", "a"), access.check_login("eve", "b")      # locked 10 s
    clock.t += 11
    access.check_login("eve", "c")                                      # locked 20 s
    clock.t += 11
    assert not throttle.allowed("eve")
    clock.t += 10
    access.check_login("eve", "d")                                      # 40 s, capped at 35
    assert throttle._fails["eve"][1] == pytest.approx(clock.t + 35)


def test_many_names_cannot_lift_the_global_brake():
    clock = Clock()
    access = Access("pw", throttle=LoginThrottle(free=5, global_limit=10, window=60, clock=clock))
    assert not any(access.check_login(f"user{i}", "wrong") for i in range(50))
    assert not access.check_login("admin", "pw")
    clock.t += 61
    assert access.check_login("admin", "pw")


def test_spoofed_forwarded_for_is_ignored_without_a_trusted_proxy():
    assert client_ip("198.51.100.4", "1.2.3.4", trusted="") == "198.51.100.4"
    # from an untrusted peer the header is ignored even if proxies are configured
    assert client_ip("198.51.100.4", "1.2.3.4", trusted="10.0.0.0/8") == "198.51.100.4"
    # behind a trusted proxy: the right-most untrusted hop; forged entries to its left are ignored
    assert client_ip("10.0.0.2", "6.6.6.6, 203.0.113.9", trusted="10.0.0.0/8") == "203.0.113.9"
    assert client_ip("10.0.0.2", "6.6.6.6, 203.0.113.9, 10.0.0.7", trusted="10.0.0.0/8") == "203.0.113.9"
    assert client_ip("10.0.0.2", "not-an-ip", trusted="10.0.0.0/8") == "10.0.0.2"
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        client_ip("10.0.0.2", "1.1.1.1", trusted="bogus")


def test_rate_limiter_sliding_window():
    clock = Clock()
    limiter = RateLimiter(3, 60, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    clock.t += 61
    assert limiter.allow("a")
