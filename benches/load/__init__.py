"""Cross-MTA load benchmark: smtprs against Postfix and aiosmtpd, same run, same machine.

    python -m benches.load [--quick] [--out DIR]     (or: python benches/load ...)

It sets up every server itself, on free loopback ports, in temporary
directories (never port 25, never the system's Postfix instance), runs them in
turn (A B C, then B C A, ...) for several rounds, and stops everything it
started when it ends, also on Ctrl-C or SIGTERM.

Servers, per mode:

=========  =================================  ===============================  ==================================
mode       smtprs                             Postfix                          aiosmtpd
=========  =================================  ===============================  ==================================
sink       ``queue.backend = "null"``         its C ``smtp-sink``              handler that discards
durable    fsync'd spool, then local          private instance: queue file     handler that writes an fsync'd
           delivery to a Maildir              fsync'd before 250, then         Maildir file (file + directory)
                                              ``virtual`` delivery to Maildir  before 250
e2e        as durable; measured by files      as durable; measured by files    as durable (delivery is inline)
           landing in Maildir ``new/``        landing in Maildir ``new/``
relay      fsync'd spool, then SMTP to the    private instance, ``relayhost``  fsync'd spool file, forwarded with
           sink by ``relay.transport``        = the sink                       ``smtplib`` before 250
=========  =================================  ===============================  ==================================

Relay mode's next hop is Postfix's ``smtp-sink``, started by the bench on its
own loopback port for every run (``servers.NextHop``); what it receives is
counted (its ``-c`` counters) over the same window as end to end.

A fourth server, ``floor`` (``benches/load/trio_floor.py``), runs only when
asked for (``--servers smtprs,postfix,aiosmtpd,floor``): canned replies on one
Trio task per session, and in durable/e2e modes a group-committed segment and
batched Maildir delivery, with nothing else.  It is not an MTA; its msgs/s is
the most a server built on Trio sessions can reach on the machine, so the
targets table can say which targets are within reach of the design at all.

Two more modes, smtprs only and only when asked for (``--modes
durable,durable-dkim-rsa,durable-dkim-ed25519``), measure DKIM signing: the
durable configuration with ``relay.trusted_networks = ["127.0.0.0/8"]`` and a
``[[dkim.keys]]`` entry (RSA-2048 or Ed25519, made by ``smtprs dkim keygen``)
for the load's From: domain, so every message is signed before its 250.
After each window up to 20 delivered messages are checked (a DKIM-Signature
field, and dkimpy's verification with the published key), and results.md
sets signing on beside off in a table of its own.

One more, smtprs and Postfix, when asked for (``--modes milter-rspamd``):
durable acceptance with the same rspamd as a milter behind both
(``benches/load/rspamd.py``: its proxy worker in milter mode, self-scanning,
one process per CPU, DNS from a dnsmasq that answers NXDOMAIN at once).
rspamd's own CPU is in neither server's column.

Load: Postfix's ``smtp-source`` (C, cheap; one message per connection, HELO,
MAIL, RCPT, DATA, QUIT; ``-c`` prints a counter after each 250, read here with
timestamps).  Throughput is counted over a window after a warm-up.

Acceptance latency (end of DATA to 250) comes from ``benches/load/probe.py``:
at concurrency C >= 2 it is one of the C sessions (smtp-source runs the other
C-1), so the latency is sampled at exactly the load being measured; at C = 1
it runs alone after the throughput phase.

Per run it records msgs/s, MB/s, p50/p99 latency, the server's peak memory
(sum of VmRSS over its process tree, sampled every 0.2 s, and the sum of PSS,
which does not count shared pages once per process), the server's CPU per
message, the load generator's CPU, and the CPU used by everything else on the
machine (other people's compilers), so a disturbed run can be seen.

Output in --out DIR (default: benches/results/<date>-<time>/, git-ignored):
results.md (also printed), results.json (all runs, summary, machine),
runs.jsonl (written as runs finish), msgs_per_s.png (only with matplotlib,
the ``bench`` extra).  ``--report DIR/results.json`` re-renders the table and
chart from saved data.

The modules:

- ``settings``: the servers, modes, message and tools, and ``Settings``;
- ``procs``: process accounting from /proc (trees, CPU, RSS/PSS sampling) and
  the registry of what was started;
- ``servers``: one adapter per server (smtprs, Postfix, aiosmtpd, the floors);
- ``driver``: smtp-source, the latency probe, and one measured run;
- ``report``: the summary over rounds, results.md, the chart, progress lines;
- ``targets``: the targets of issues 4 and 13, and the table of which were met;
- ``__main__``: the command line and the plan of runs.

``probe.py``, ``aiosmtpd_server.py`` and ``trio_floor.py`` are not imported:
they are scripts, started by path in their own processes.
"""
