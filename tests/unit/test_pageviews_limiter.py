"""The ingest path's in-process token buckets: the configured rate per address, and a bounded
memory that drops the least recently used bucket instead of wiping every client's at once."""

from __future__ import annotations

from app.domains.pageviews.limiter import LocalRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exhausted(limiter: LocalRateLimiter, address: str) -> bool:
    """Whether ``address`` has no token left (a refusal leaves its bucket as it was)."""
    return limiter.take(address) > 0


def test_a_bucket_admits_its_capacity_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(60, clock=clock)  # 60 a minute: one token a second
    assert all(limiter.take("192.0.2.1") == 0.0 for _ in range(60))
    assert limiter.take("192.0.2.1") == 1.0, "the wait until the next token"
    clock.now += 0.5
    assert limiter.take("192.0.2.1") == 0.5
    clock.now += 0.5
    assert limiter.take("192.0.2.1") == 0.0
    assert limiter.take("192.0.2.2", 60) == 0.0, "every address has its own bucket"


def test_a_batch_needs_all_its_tokens_at_once() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(60, clock=clock)
    assert limiter.take("192.0.2.1", 59) == 0.0
    assert limiter.take("192.0.2.1", 3) == 2.0, "one token left, three needed"
    assert limiter.take("192.0.2.1", 1) == 0.0, "the refused batch took nothing"


def test_a_bucket_left_alone_for_a_minute_is_full_again() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(60, clock=clock)
    assert limiter.take("192.0.2.1", 60) == 0.0
    assert exhausted(limiter, "192.0.2.1")
    clock.now += 60
    assert limiter.take("192.0.2.1", 60) == 0.0


def test_more_addresses_than_it_holds_drop_the_least_recent_bucket_not_every_bucket() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(60, max_addresses=3, clock=clock)
    for address in ("a", "b"):
        assert limiter.take(address, 60) == 0.0
    assert limiter.take("c") == 0.0
    assert exhausted(limiter, "a")  # "a" keeps sending: its bucket is the most recently used
    assert limiter.take("d") == 0.0  # a fourth address: the least recently used bucket ("b") goes
    assert exhausted(limiter, "a"), "a client still sending stays limited whatever others send"
    assert limiter.take("b", 60) == 0.0, "only the dropped bucket starts full again"


def test_an_ipv6_slash_64_is_one_client_and_the_next_slash_64_another() -> None:
    limiter = LocalRateLimiter(60, clock=Clock())
    assert limiter.take("2001:db8:1:2::1", 30) == 0.0
    assert limiter.take("2001:db8:1:2:ffff:ffff:ffff:ffff", 30) == 0.0
    assert exhausted(limiter, "2001:db8:1:2:abcd::9"), "any address of the /64 draws on one bucket"
    assert limiter.take("2001:db8:1:3::1", 60) == 0.0, "the neighbouring /64 is another client"


def test_an_ipv4_mapped_ipv6_address_counts_as_its_ipv4_address() -> None:
    limiter = LocalRateLimiter(60, clock=Clock())
    assert limiter.take("192.0.2.7", 60) == 0.0
    assert exhausted(limiter, "::ffff:192.0.2.7")
    assert limiter.take("192.0.2.8") == 0.0, "IPv4 addresses are not grouped"
