"""The admin login's failed-attempt throttle, and the client address behind (trusted) proxies."""

from __future__ import annotations

import pytest

from dreamshot.access import LOGIN_ADDRESS, Access, LoginThrottle
from dreamshot.client_address import client_ip, forwarded_for
from dreamshot.survey.limits import RateLimiter


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _login(access, name, password, address):
    token = LOGIN_ADDRESS.set(address)
    try:
        return access.check_login(name, password)
    finally:
        LOGIN_ADDRESS.reset(token)


def test_hundred_wrong_passwords_lock_the_name_there_and_the_right_one_waits():
    clock = Clock()
    access = Access("s3cret-pass", throttle=LoginThrottle(free=5, base_lock=30, address_free=1000, clock=clock))
    here = "198.51.100.4"
    results = [_login(access, "bob", f"guess{i}", here) for i in range(100)]
    assert not any(results)
    assert access.throttle._names[("bob", here)].count == 5    # after 5 failures the password is not even tried
    assert not _login(access, "bob", "s3cret-pass", here)      # locked: even the right password waits
    assert _login(access, "alice", "s3cret-pass", here)        # another name is not locked
    assert _login(access, "bob", "s3cret-pass", "203.0.113.8")  # nor the same name from another address
    clock.t += 31
    assert _login(access, "bob", "s3cret-pass", here)          # lock over; success clears the count
    assert ("bob", here) not in access.throttle._names


def test_lock_grows_with_each_further_failure():
    clock = Clock()
    throttle = LoginThrottle(free=2, base_lock=10, max_lock=35, address_free=1000, clock=clock)
    access = Access("pw", throttle=throttle)
    _login(access, "eve", "a", "x"), _login(access, "eve", "b", "x")      # locked 10 s
    clock.t += 11
    _login(access, "eve", "c", "x")                                      # locked 20 s
    clock.t += 11
    assert not throttle.allowed("eve", "x")
    clock.t += 10
    _login(access, "eve", "d", "x")                                      # 40 s, capped at 35
    assert throttle._names[("eve", "x")].until == pytest.approx(clock.t + 35)


def test_many_names_lock_the_address_but_nobody_elsewhere(caplog):
    clock = Clock()
    access = Access("pw", throttle=LoginThrottle(free=5, address_free=10, alarm_per_minute=20, clock=clock))
    with caplog.at_level("WARNING", logger="dreamshot.access"):
        assert not any(_login(access, f"user{i}", "wrong", "203.0.113.9") for i in range(50))
        assert not any(_login(access, "admin", f"guess{i}", f"198.51.100.{i}") for i in range(30))
    assert not _login(access, "admin", "pw", "203.0.113.9")    # the guessing address is locked
    assert _login(access, "admin", "pw", "192.0.2.1")          # a clean address: never locked out
    messages = [r.getMessage() for r in caplog.records]
    assert any("address 203.0.113.9 locked" in m for m in messages), messages
    assert any("across all addresses" in m for m in messages), messages   # the alarm, once
    clock.t += 31
    assert _login(access, "admin", "pw", "203.0.113.9")


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


def test_every_forwarded_for_line_counts_in_order():
    from starlette.datastructures import Headers

    raw = [(b"x-forwarded-for", b"6.6.6.6"), (b"host", b"x"), (b"x-forwarded-for", b"203.0.113.9, 10.0.0.7")]
    assert forwarded_for(raw) == "6.6.6.6, 203.0.113.9, 10.0.0.7"
    assert forwarded_for(Headers(raw=raw)) == "6.6.6.6, 203.0.113.9, 10.0.0.7"
    assert forwarded_for({"x-forwarded-for": "1.2.3.4"}) == "1.2.3.4"
    assert client_ip("10.0.0.2", forwarded_for(raw), trusted="10.0.0.0/8") == "203.0.113.9"


def test_rate_limiter_sliding_window():
    clock = Clock()
    limiter = RateLimiter(3, 60, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    clock.t += 61
    assert limiter.allow("a")
