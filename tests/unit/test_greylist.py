"""Greylisting's decisions (screen/greylist.py), in given time, on a real SQLite file."""

from __future__ import annotations

import multiprocessing

import pytest

from smtprs import config
from smtprs.errors import ConfigError
from smtprs.screen.greylist import Greylist, Store, Timing, client_network

T = Timing(delay=300.0, retry_window=86400.0, max_age=35 * 86400.0, auto_allowlist=2)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "greylist.sqlite"))
    yield s
    s.close()


def test_client_networks():
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3::9") == "2001:db8:1:2::/64"


def test_a_triplet_passes_when_retried_after_the_delay(store):
    v = store.check_now("192.0.2.1", "a@client.test", "u@example.org", 1000.0, T)
    assert (v.passed, v.why, v.remaining) == (False, "new", 300.0)
    assert v.reply("u@example.org").code == 450 and v.reply("u@example.org").enhanced == "4.7.1"
    early = store.check_now("192.0.2.1", "a@client.test", "u@example.org", 1100.0, T)
    assert (early.passed, early.why, early.remaining) == (False, "early", 200.0)  # an early retry does not restart it
    # another address of the same /24 is the same client; case does not matter
    ok = store.check_now("192.0.2.200", "A@Client.test", "U@example.org", 1300.0, T)
    assert (ok.passed, ok.why) == (True, "retried")
    assert store.check_now("192.0.2.1", "a@client.test", "u@example.org", 1301.0, T).why == "known"
    # another sender, recipient or network is another triplet
    assert not store.check_now("192.0.2.1", "b@client.test", "u@example.org", 1302.0, T).passed
    assert not store.check_now("192.0.2.1", "a@client.test", "v@example.org", 1302.0, T).passed
    assert not store.check_now("198.51.100.1", "a@client.test", "u@example.org", 1302.0, T).passed


def test_a_retry_after_the_window_starts_again(store):
    store.check_now("192.0.2.1", "", "u@example.org", 0.0, T)
    late = store.check_now("192.0.2.1", "", "u@example.org", 86400.0 + 1, T)
    assert (late.passed, late.why) == (False, "new")
    assert store.check_now("192.0.2.1", "", "u@example.org", 86400.0 + 302, T).passed


def test_a_client_that_passed_enough_triplets_is_allowlisted(store):
    for i, rcpt in enumerate(("a@example.org", "b@example.org")):
        store.check_now("203.0.113.5", "s@client.test", rcpt, 0.0 + i, T)
        assert store.check_now("203.0.113.5", "s@client.test", rcpt, 400.0 + i, T).passed
    v = store.check_now("203.0.113.9", "other@client.test", "new@example.org", 500.0, T)
    assert (v.passed, v.why) == (True, "allowlisted")
    # and is forgotten after max_age without mail
    assert not store.check_now("203.0.113.9", "other@client.test", "new2@example.org", 500.0 + T.max_age + 10, T).passed


def test_expired_entries_are_purged(store):
    for i in range(50):
        store.check_now("192.0.2.1", f"s{i}@client.test", "u@example.org", 0.0, T)
    store.check_now("192.0.2.1", "s0@client.test", "u@example.org", 400.0, T)  # passes: kept max_age
    assert store.count() == 50
    store.purge(86400.0 + 500, T)  # the unretried ones are gone after the retry window
    assert store.count() == 1
    store.purge(400.0 + T.max_age + 1, T)
    assert store.count() == 0


def _first_try(path: str, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = Store(path)
    q.put(s.check_now("192.0.2.1", "s@client.test", "u@example.org", 0.0, T).why)
    s.close()


def test_the_store_is_shared_between_processes(tmp_path):
    """Two processes (as two workers): the triplet one saw first passes in the other."""
    path = str(tmp_path / "greylist.sqlite")
    q: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    p = multiprocessing.get_context("spawn").Process(target=_first_try, args=(path, q))
    p.start()
    p.join(30)
    assert q.get(timeout=5) == "new"
    s = Store(path)
    assert s.check_now("192.0.2.1", "s@client.test", "u@example.org", 301.0, T).why == "retried"
    s.close()


def test_exemptions(tmp_path):
    cfg = config.load(
        overrides={
            "data_dir": str(tmp_path),
            "relay": {"trusted_networks": ["10.1.0.0/16"]},
            "screen": {
                "greylist": {
                    "enabled": True,
                    "exempt_networks": ["$trusted_networks", "192.0.2.0/25"],
                    "exempt_domains": ["Example.NET"],
                }
            },
        }
    )
    store = Store(str(tmp_path / "g.sqlite"))
    g = Greylist(cfg, store)
    assert g.exempt("10.1.2.3", "u@example.org") and g.exempt("192.0.2.100", "u@example.org")
    assert not g.exempt("192.0.2.200", "u@example.org")
    assert g.exempt("198.51.100.1", "postmaster@example.net") and g.exempt("198.51.100.1", "u@mx.example.net")
    assert not g.exempt("198.51.100.1", "u@notexample.net")
    store.close()


def test_settings_are_checked():
    with pytest.raises(ConfigError, match=r"screen.greylist.exempt_networks\[0\]"):
        config.load(overrides={"screen": {"greylist": {"exempt_networks": ["10.0.0.0/33"]}}})
    with pytest.raises(ConfigError, match="screen.greylist.retry_window"):
        config.load(overrides={"screen": {"greylist": {"delay": 600.0, "retry_window": 60.0}}})
