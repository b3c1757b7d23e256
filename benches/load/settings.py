"""What a load run is made of: the servers, the modes, the message, the tools, and the settings.

Shared by every module of the package; imports nothing of it.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

HELPERS = Path(__file__).resolve().parent  # the scripts started by path: probe.py, aiosmtpd_server.py, trio_floor.py
RESULTS = HELPERS.parent / "results"  # the default output: benches/results/<date>-<time>/ (git-ignored)
DOMAIN = "bench.test"
RCPT = f"box@{DOMAIN}"
SENDER = "load@source.test"
SENDER_DOMAIN = "source.test"  # smtp-source's and the probe's From: domain: the one the DKIM modes sign for
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"

SERVERS = ("smtprs", "postfix", "aiosmtpd", "floor", "floor-accept")
DEFAULT_SERVERS = ("smtprs", "postfix", "aiosmtpd")
BASE_MODES = ("sink", "durable", "e2e", "relay")  # every server's
# smtprs only, run when asked for (--modes durable,durable-dkim-rsa,...): durable
# with DKIM signing on -- the load comes from relay.trusted_networks, and every
# message's From: (smtp-source's, the probe's) is in SENDER_DOMAIN, which has a key
DKIM_MODES = {"durable-dkim-rsa": "rsa-sha256", "durable-dkim-ed25519": "ed25519-sha256"}
# smtprs and Postfix, run when asked for: durable acceptance with the same rspamd
# as a milter behind both (benches/load/rspamd.py)
MILTER_MODES = ("milter-rspamd",)
MODES = (*BASE_MODES, *DKIM_MODES, *MILTER_MODES)
DEFAULT_MODES = BASE_MODES
MODE_TITLES = {
    "sink": "Sink mode (accept and discard; no fsync)",
    "durable": "Durable acceptance (250 only once the message is fsync'd)",
    "e2e": "End to end (accept, then delivery to an fsync'd Maildir), steady state",
    "relay": "Relay (accept, fsync'd queue, then SMTP to a local smtp-sink; counted at the sink), steady state",
    "durable-dkim-rsa": "Durable acceptance, DKIM-signed (RSA-2048)",
    "durable-dkim-ed25519": "Durable acceptance, DKIM-signed (Ed25519)",
    "milter-rspamd": "Durable acceptance with rspamd as a milter (the same rspamd for both)",
}
PEER_LABEL = {  # what each server is in each mode, for the tables
    ("postfix", "sink"): "Postfix smtp-sink",
    ("aiosmtpd", "sink"): "aiosmtpd (no-op handler)",
    ("smtprs", "sink"): "smtprs (queue.backend = null)",
    ("postfix", "durable"): "Postfix",
    ("postfix", "e2e"): "Postfix",
    ("aiosmtpd", "durable"): "aiosmtpd (fsync'd Maildir)",
    ("aiosmtpd", "e2e"): "aiosmtpd (fsync'd Maildir)",
    ("floor", "sink"): "Trio floor (canned replies)",
    ("floor", "durable"): "Trio floor (canned replies, group commit, syncfs Maildir)",
    ("floor", "e2e"): "Trio floor (canned replies, group commit, syncfs Maildir)",
    ("smtprs", "relay"): "smtprs (fsync'd spool, relay.transport to the sink, pooled connections)",
    ("postfix", "relay"): "Postfix (relayhost = the sink, its smtp client's defaults)",
    ("aiosmtpd", "relay"): "aiosmtpd (fsync'd spool file, then smtplib to the sink before 250)",
    ("floor-accept", "durable"): "Trio floor, acceptance only (nothing delivered)",
    ("smtprs", "durable-dkim-rsa"): "smtprs (as durable, from a trusted network, signed rsa-sha256, 2048 bits)",
    ("smtprs", "durable-dkim-ed25519"): "smtprs (as durable, from a trusted network, signed ed25519-sha256)",
    ("smtprs", "milter-rspamd"): "smtprs (as durable, [milter] milters = rspamd's proxy)",
    ("postfix", "milter-rspamd"): "Postfix (as durable, smtpd_milters = rspamd's proxy)",
}


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


@dataclass
class Settings:
    rounds: int = 3
    warmup: float = 2.0  # seconds of load before the window (sink, durable)
    window: float = 10.0  # seconds counted (sink, durable)
    latency_seconds: float = 8.0  # the probe alone, at concurrency 1
    e2e_warmup: float = 10.0  # also relay mode's
    e2e_window: float = 60.0  # also relay mode's
    servers: tuple[str, ...] = DEFAULT_SERVERS
    modes: tuple[str, ...] = DEFAULT_MODES
    sizes: tuple[int, ...] = (1024, 102400)
    concurrency: tuple[int, ...] = (1, 10, 50)
    smtprs_cmd: tuple[str, ...] = (sys.executable, "-m", "smtprs")
    smtprs_workers: int | None = None
    smtprs_pythonpath: str | None = None  # a snapshot of python/ to import smtprs from
    quick: bool = False

    @property
    def server_processes(self) -> int:
        """How many processes smtprs serves with (its workers: --smtprs-workers, else
        its default of one per CPU); the floor runs with as many, so that it is a
        bound for the same number of cores (issue 13)."""
        return self.smtprs_workers or os.cpu_count() or 1

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(rounds=1, warmup=0.5, window=2.0, latency_seconds=2.0, e2e_warmup=1.0, e2e_window=4.0, quick=True)
