"""Metrics: the server's counters, gauges and latency histograms, and their
Prometheus text rendering.

Owns one ``Metrics`` per worker process, fed by the sessions (connections,
accepted and rejected messages, acceptance latency), the scheduler
(deliveries by transport and result, delivery latency) and read at scrape
time for the gauges (queue size and age, active sessions).  Every metric is
declared once in ``DEFINITIONS`` with its type and help text.

A snapshot (``Metrics.snapshot()``) is plain JSON, so worker 0 can gather the
other workers' snapshots through their control sockets and ``merge`` them:
counters, histograms and gauges add up, except the gauges listed in
``MAX_GAUGES`` (an age), which take the largest.  ``render`` turns merged
samples into the Prometheus text exposition format (version 0.0.4).
Writes nothing; the HTTP listener is metrics_http.py.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

# seconds: from a millisecond (a spool commit) to a day (a deferred delivery)
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
    3600,
    14400,
    86400,
)

DEFINITIONS: dict[str, tuple[str, str]] = {
    "smtprs_connections_total": ("counter", "SMTP, LMTP and POP3 connections accepted, by listener mode."),
    "smtprs_sessions_active": ("gauge", "Sessions open now."),
    "smtprs_greylist_total": (
        "counter",
        "Greylisting checks of mx recipients (screen.greylist), by result (deferred, passed) and reason "
        "(new, early: deferred; retried, known, allowlisted: passed).",
    ),
    "smtprs_dkim_signatures_total": (
        "counter",
        "Messages eligible for DKIM signing (authenticated or trusted client, keys configured), by result: "
        "signed, or unsigned (no key for the From: domain, no single From: domain, or an error; the log says which).",
    ),
    "smtprs_mailauth_results_total": (
        "counter",
        "Inbound authentication results on mx listeners (mailauth.enabled), by method (spf, spf_helo: the HELO name of a non-null sender, dkim, arc, dmarc) and "
        "RFC 8601 result (pass, fail, softfail, neutral, none, temperror, permerror); one per DKIM signature.",
    ),
    "smtprs_mailauth_actions_total": (
        "counter",
        "What the inbound authentication policy did to a message: accepted, quarantine-header, rejected (5xx) or deferred (4xx).",
    ),
    "smtprs_messages_accepted_total": (
        "counter",
        "Messages accepted and queued (250 after the data), by listener mode.",
    ),
    "smtprs_messages_rejected_total": (
        "counter",
        "Error replies to MAIL, RCPT, DATA/BDAT and the connection, by stage and reply code (the reason).",
    ),
    "smtprs_deliveries_total": (
        "counter",
        "Per-recipient delivery outcomes, by transport (maildir, mbox, lmtp, smtp, none) and result (delivered, deferred, bounced).",
    ),
    "smtprs_queue_messages": ("gauge", "Messages in the queue."),
    "smtprs_queue_held_messages": ("gauge", "Messages on hold (smtprs queue hold)."),
    "smtprs_queue_active_deliveries": ("gauge", "Messages being delivered now."),
    "smtprs_queue_oldest_age_seconds": ("gauge", "Age of the oldest queued message."),
    "smtprs_spool_commits_total": ("counter", "Group commits of the spool: one write() and one fdatasync() each."),
    "smtprs_spool_records_total": (
        "counter",
        "Spool records (new messages, finished ones) written by those commits; over smtprs_spool_commits_total: how many records each fdatasync covered.",
    ),
    "smtprs_flow_delays_total": (
        "counter",
        "MAIL commands answered after a wait because delivery was behind (queue.in_flow_delay, as Postfix's in_flow_delay).",
    ),
    "smtprs_acceptance_seconds": (
        "histogram",
        "From the end of the message data to the 250 reply (the durable spool commit).",
    ),
    "smtprs_delivery_seconds": ("histogram", "From arrival to a successful delivery, per recipient, by transport."),
    "smtprs_build_info": (
        "gauge",
        "Always 1; the labels say what runs: version (the package), core (the Rust core's version), "
        "python and openssl (as `smtprs --version` prints them).",
    ),
    "smtprs_tls_rpt_sessions_total": (
        "counter",
        "Outbound SMTP sessions to MX hosts, as an RFC 8460 TLS report counts them: by policy_type "
        "(sts: MTA-STS, tlsa: DANE, no-policy-found), result (success, failure) and, for failures, failure (RFC 8460's "
        "result type: starttls-not-supported, certificate-host-mismatch, certificate-expired, certificate-not-trusted, "
        "validation-failure, sts-policy-fetch-error, sts-policy-invalid, sts-webpki-invalid, tlsa-invalid, dnssec-invalid, "
        "dane-required; empty on success).",
    ),
}
# the largest, not the sum: an age, and the build (1 from each worker)
MAX_GAUGES = frozenset({"smtprs_queue_oldest_age_seconds", "smtprs_build_info"})

Labels = tuple[tuple[str, str], ...]


@functools.cache
def build_info() -> dict[str, str]:
    """What runs, for ``smtprs --version`` and the ``smtprs_build_info`` gauge:
    the package version (its installed metadata; "unknown" when run from a
    source tree that was never installed), the Rust
    core's version (the only build attribute ``_core`` exposes), Python,
    OpenSSL, and the versions of trio and dnspython."""
    import importlib.metadata
    import platform
    import ssl

    from . import _core  # (not the package: it imports metrics through the daemon)

    def dist(name: str, fallback: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return fallback

    return {
        "version": dist("smtprs", "unknown"),
        "core": _core.__version__,
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "trio": dist("trio", "unknown"),
        "dnspython": dist("dnspython", "unknown"),
    }


class Metrics:
    """The figures of one worker. Counting is a dict update: cheap enough for every reply."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], list[float]] = {}  # bucket counts..., sum, count
        self.gauges: dict[str, Callable[[], float]] = {}  # read at snapshot time
        info = build_info()
        self.info: Labels = tuple(sorted((k, info[k]) for k in ("version", "core", "python", "openssl")))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = [0.0] * (len(BUCKETS) + 3)  # buckets, +Inf, sum, count
        h[bisect.bisect_left(BUCKETS, seconds)] += 1  # the first bucket with le >= seconds (or +Inf)
        h[-2] += seconds
        h[-1] += 1

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def snapshot(self) -> dict[str, Any]:
        """Every sample as JSON-able lists (for the control socket's STATS)."""
        return {
            "counters": [[n, list(map(list, labels)), v] for (n, labels), v in self.counters.items()],
            "histograms": [[n, list(map(list, labels)), list(h)] for (n, labels), h in self.histograms.items()],
            "gauges": [[n, [], float(read())] for n, read in self.gauges.items()]
            + [["smtprs_build_info", list(map(list, self.info)), 1.0]],
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up the snapshots of several workers (ages: the largest)."""
    counters: dict[tuple[str, Labels], float] = {}
    gauges: dict[tuple[str, Labels], float] = {}
    hists: dict[tuple[str, Labels], list[float]] = {}
    for snap in snapshots:
        for n, labels, v in snap.get("counters", []):
            key = (n, tuple(tuple(x) for x in labels))
            counters[key] = counters.get(key, 0.0) + v
        for n, labels, v in snap.get("gauges", []):
            key = (n, tuple(tuple(x) for x in labels))
            gauges[key] = max(gauges.get(key, 0.0), v) if n in MAX_GAUGES else gauges.get(key, 0.0) + v
        for n, labels, h in snap.get("histograms", []):
            key = (n, tuple(tuple(x) for x in labels))
            old = hists.get(key)
            hists[key] = list(h) if old is None else [a + b for a, b in zip(old, h)]
    return {
        "counters": [[n, list(map(list, labels)), v] for (n, labels), v in counters.items()],
        "histograms": [[n, list(map(list, labels)), h] for (n, labels), h in hists.items()],
        "gauges": [[n, list(map(list, labels)), v] for (n, labels), v in gauges.items()],
    }


def _labels(labels: Iterable[Iterable[str]], extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf"
    return repr(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def render(snapshot: dict[str, Any]) -> str:
    """The Prometheus text format of a (merged) snapshot; every declared metric
    gets its HELP and TYPE lines, so a metric with no sample yet is still listed."""
    by_name: dict[str, list[str]] = {n: [] for n in DEFINITIONS}
    for n, labels, v in sorted(snapshot.get("counters", []) + snapshot.get("gauges", []), key=lambda s: (s[0], s[1])):
        by_name.setdefault(n, []).append(f"{n}{_labels(labels)} {_num(v)}")
    for n, labels, h in sorted(snapshot.get("histograms", []), key=lambda s: (s[0], s[1])):
        lines = by_name.setdefault(n, [])
        cumulative = 0.0
        for le, count in zip((*BUCKETS, math.inf), h[: len(BUCKETS) + 1]):
            cumulative += count
            le_label = 'le="' + _num(le) + '"'
            lines.append(f"{n}_bucket{_labels(labels, le_label)} {_num(cumulative)}")
        lines.append(f"{n}_sum{_labels(labels)} {_num(h[-2])}")
        lines.append(f"{n}_count{_labels(labels)} {_num(h[-1])}")
    out = []
    for n, lines in by_name.items():
        kind, doc = DEFINITIONS.get(n, ("untyped", ""))
        out.append(f"# HELP {n} {doc}")
        out.append(f"# TYPE {n} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n"


def value(snapshot: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (for ``smtprs status``)."""
    total = 0.0
    for kind in ("counters", "gauges"):
        for n, ls, v in snapshot.get(kind, []):
            if n == name and all([k, val] in [list(x) for x in ls] for k, val in labels.items()):
                total += v
    return total
