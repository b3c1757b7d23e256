"""The mail log: one line per event, greppable by queue id, as Postfix's maillog.

One function per event, so the wording of each line is defined once.  Lines go
to the ``smtprs.mail`` logger; ``setup()`` sends it (and the debug logger
``smtprs``) to standard error or a file.  Passwords and message content are
never passed here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from logging import ERROR, INFO, WARNING

log = logging.getLogger("smtprs.mail")

# Each line of the mail log is built here, not by Logger.info: the logging
# module's own path (a stack walk to find the caller, a LogRecord that looks
# up thread and process names, strftime for every line) cost ~35 µs per line
# inside the server, two to five lines per message, 10-15% of a message's CPU.
# The record carries every field a handler or formatter may read (an
# embedding program's own handlers see these records too): funcName is the
# maillog function, the JSON format's ``event``; the process id is looked up
# once per process, not once per line.
_TEMPLATE = {
    "name": log.name, "pathname": __file__, "filename": "maillog.py", "module": "maillog",
    "exc_info": None, "exc_text": None, "stack_info": None, "lineno": 0,
    "processName": "MainProcess", "taskName": None,
}  # fmt: skip
_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def _line(level: int, msg: str, *args: object) -> None:
    """Log one line at ``level``; its event (funcName) is the calling maillog function."""
    if not log.isEnabledFor(level):
        return
    record = logging.LogRecord.__new__(logging.LogRecord)
    d = record.__dict__
    d.update(_TEMPLATE)
    now = time.time()
    d["msg"] = msg
    d["args"] = args
    d["levelno"] = level
    d["levelname"] = logging.getLevelName(level)
    d["funcName"] = sys._getframe(1).f_code.co_name
    d["created"] = now
    d["msecs"] = int((now - int(now)) * 1000) + 0.0
    d["relativeCreated"] = (now - logging._startTime) * 1000  # type: ignore[attr-defined]
    d["process"] = _pid
    thread = threading.current_thread()
    d["thread"] = thread.ident
    d["threadName"] = thread.name
    log.handle(record)


class PlainFormatter(logging.Formatter):
    """``2026-11-29 14:29:17,655 smtprs[PID]: message``, the local time's text made once a second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s smtprs[%(process)d]: %(message)s")
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.stack_info:
            return super().format(record)
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._stamp},{int(record.msecs):03d} smtprs[{record.process}]: {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, pid, event (the
    function of this module that wrote the line), message."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime

        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "pid": record.process,
            "event": record.funcName if record.name == log.name else "debug",
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str = "info", file: str = "", format: str = "plain") -> None:
    """Send the mail log (and the debug logger) to ``file`` or standard error,
    as plain lines or, with ``format="json"``, JSON objects."""
    use_handler(make_handler(file, format), level)


class LineHandler(logging.Handler):
    """Each line in one os.write: to ``file`` (opened for appending now, so a
    reload can refuse a file it cannot open), or to standard error.

    No Python file object in between: its text layer, buffer and flush were
    most of what a line cost once the record was built.  A line is one
    write(2), so lines from different threads or worker processes appending
    to one file do not interleave.
    """

    def __init__(self, file: str = "") -> None:
        super().__init__()
        self.fd = (
            os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666) if file else sys.stderr.fileno()
        )
        self.owned = bool(file)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self.fd, data) :]
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.owned and self.fd >= 0:
                os.close(self.fd)
            self.fd = -1
        super().close()


def make_handler(file: str = "", format: str = "plain") -> logging.Handler:
    """A handler for ``file`` (opened now, so a reload can refuse a file it cannot open), or stderr."""
    handler: logging.Handler
    try:
        handler = LineHandler(file)
    except (AttributeError, ValueError, OSError):  # standard error without a descriptor (a test harness's)
        if file:
            raise
        handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    return handler


def use_handler(handler: logging.Handler, level: str) -> None:
    """Log through ``handler`` from now on (the previous one is closed: a reopened log file)."""
    root = logging.getLogger("smtprs")
    old = list(root.handlers)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    for h in old:
        if h is not handler:
            h.close()


def listening(address: str, mode: str) -> None:
    _line(INFO, "listening on %s mode=%s", address, mode)


def accept_capacity(address: str, reason: str) -> None:
    """accept() ran out of a resource (file descriptors, memory): waited out, not fatal."""
    _line(WARNING, "cannot accept connections on %s: %s; trying again shortly", address, reason)


def listener_closed(address: str) -> None:
    _line(INFO, "no longer listening on %s (removed from the configuration)", address)


def shutting_down(sessions: int, busy: int, timeout: float) -> None:
    _line(
        WARNING,
        "shutting down: no new connections; %d sessions open, %d in a transaction, given %.0fs to finish",
        sessions,
        busy,
        timeout,
    )


def reloaded(path: str, sessions: int, added: int, removed: int) -> None:
    _line(
        WARNING,
        "reloaded the configuration from %s (new sessions use it; %d open sessions keep theirs; listeners: %d added, %d removed)",
        path,
        sessions,
        added,
        removed,
    )


def reload_refused(path: str, why: str) -> None:
    _line(ERROR, "reload refused, the running configuration stays: %s: %s", path, why)


def connect(session: str, peer: str) -> None:
    _line(INFO, "%s: connect from %s", session, peer)


def disconnect(session: str, peer: str, commands: int, errors: int) -> None:
    _line(INFO, "%s: disconnect from %s commands=%d errors=%d", session, peer, commands, errors)


def reject(session: str, peer: str, stage: str, reply: object, detail: str = "") -> None:
    extra = f"; {detail}" if detail else ""
    _line(INFO, "%s: reject: %s from %s: %s%s", session, stage, peer, reply, extra)


def queued(qid: str, sender: str, size: int, nrcpt: int, peer: str, auth_user: str | None = None) -> None:
    if auth_user is None:
        _line(INFO, "%s: from=<%s>, size=%d, nrcpt=%d, client=%s (queue active)", qid, sender, size, nrcpt, peer)
    else:
        _line(
            INFO,
            "%s: from=<%s>, size=%d, nrcpt=%d, client=%s, sasl_username=%s (queue active)",
            qid,
            sender,
            size,
            nrcpt,
            peer,
            auth_user,
        )


def tls_established(session: str, peer: str, description: str) -> None:
    _line(INFO, "%s: TLS established with %s: %s", session, peer, description)


def tls_failed(session: str, peer: str, reason: str) -> None:
    _line(INFO, "%s: TLS handshake with %s failed: %s", session, peer, reason)


def starttls_pipelined(session: str, peer: str, octets: int) -> None:
    """Bytes sent after STARTTLS before the handshake (CVE-2011-0411): dropped unread."""
    _line(
        WARNING,
        "%s: %s sent %d octets after STARTTLS before the TLS handshake; discarded, not executed",
        session,
        peer,
        octets,
    )


def auth_ok(session: str, peer: str, mechanism: str, user: str) -> None:
    _line(INFO, "%s: AUTH %s from %s: authenticated as %s", session, mechanism, peer, user)


def auth_failed(session: str, peer: str, mechanism: str, user: str | None, failures: int, delay: float) -> None:
    """``user`` only when it names a known user: an unknown "name" may be a mistyped password."""
    who = f" as {user}" if user is not None else ""
    _line(
        INFO,
        "%s: AUTH %s from %s failed%s (failure %d from this address, reply delayed %.1fs)",
        session,
        mechanism,
        peer,
        who,
        failures,
        delay,
    )


def _orig(orig: str) -> str:
    return f", orig_to=<{orig}>" if orig else ""


def delivered(qid: str, rcpt: str, relay: str, delay: float, detail: str, *, orig: str = "") -> None:
    _line(INFO, "%s: to=<%s>%s, relay=%s, delay=%.3f, status=sent (%s)", qid, rcpt, _orig(orig), relay, delay, detail)


def deferred(
    qid: str, rcpt: str, relay: str, delay: float, reason: str, retry_in: float | None, *, orig: str = ""
) -> None:
    """``retry_in`` None: not ours to retry (an LMTP client was told 4xx)."""
    retry = f", retry in {retry_in:.0f}s" if retry_in is not None else ""
    _line(
        INFO,
        "%s: to=<%s>%s, relay=%s, delay=%.3f, status=deferred (%s)%s",
        qid,
        rcpt,
        _orig(orig),
        relay,
        delay,
        reason,
        retry,
    )


def failed(qid: str, rcpt: str, relay: str, delay: float, reason: str, *, orig: str = "") -> None:
    _line(
        INFO, "%s: to=<%s>%s, relay=%s, delay=%.3f, status=bounced (%s)", qid, rcpt, _orig(orig), relay, delay, reason
    )


def lmtp_received(qid: str, sender: str, size: int, nrcpt: int, peer: str) -> None:
    _line(
        INFO,
        "%s: from=<%s>, size=%d, nrcpt=%d, client=%s (LMTP: delivering now, not queued)",
        qid,
        sender,
        size,
        nrcpt,
        peer,
    )


def pop3_login(session: str, peer: str, user: str, result: str) -> None:
    _line(INFO, "%s: pop3 login user=<%s> from %s: %s", session, user, peer, result)


def pop3_update(session: str, user: str, deleted: int, problems: list[str]) -> None:
    extra = f"; not removed: {'; '.join(problems)}" if problems else ""
    _line(INFO, "%s: pop3 update user=<%s>: %d deleted%s", session, user, deleted, extra)


def pop3_disconnect(session: str, peer: str, user: str, commands: int) -> None:
    _line(INFO, "%s: pop3 disconnect from %s user=<%s> commands=%d", session, peer, user, commands)


def relay_problem(qid: str, relay: str, detail: str) -> None:
    _line(INFO, "%s: relay=%s: %s", qid, relay, detail)


def relay_tls_established(relay: str, verified: bool, version: str, cipher: str) -> None:
    _line(
        INFO,
        "%s TLS connection established to %s: %s with cipher %s",
        "Verified" if verified else "Untrusted",
        relay,
        version,
        cipher,
    )


def relay_tls_fallback(relay: str) -> None:
    _line(INFO, "TLS handshake with %s failed: trying again without TLS (relay.tls = may)", relay)


def relay_dane_verified(relay: str, tlsa_name: str, record: str) -> None:
    _line(INFO, "DANE verified TLS connection to %s: TLSA %s at %s matched", relay, record, tlsa_name)


def relay_dane_encrypt(relay: str, tlsa_name: str) -> None:
    _line(
        INFO,
        "TLS connection to %s encrypted but not authenticated: no usable TLSA record at %s (RFC 7672 2.2)",
        relay,
        tlsa_name,
    )


def tls_policy_failure(relay: str, policy_type: str, result_type: str, detail: str) -> None:
    """A session that an outbound TLS policy (``policy_type``: tlsa, sts) failed, with its RFC 8460 result type."""
    _line(WARNING, "TLS policy failure (policy_type=%s result=%s) for %s: %s", policy_type, result_type, relay, detail)


def relay_auth_ok(relay: str, user: str) -> None:
    _line(INFO, "authenticated to %s as %s", relay, user)


def notice(qid: str, kind: str, sender: str, notice_qid: str, rcpts: list[str]) -> None:
    """A delivery status notification about ``qid`` was queued as ``notice_qid``."""
    _line(
        INFO,
        "%s: sender %s notification: %s (queued as %s; about %s)",
        qid,
        kind,
        f"<{sender}>",
        notice_qid,
        ", ".join(f"<{r}>" for r in rcpts),
    )


def no_notice(qid: str, why: str) -> None:
    _line(INFO, "%s: no notification sent: %s", qid, why)


def control(command: str, result: str) -> None:
    _line(INFO, "control: %s: %s", command, result)


def queue_action(qid: str, action: str) -> None:
    """A queue command changed a message: held, released, deleted, requeued."""
    _line(INFO, "%s: %s", qid, action)


def removed(qid: str) -> None:
    _line(INFO, "%s: removed", qid)


def dkim_signed(qid: str, detail: str) -> None:
    _line(INFO, "%s: DKIM-Signature field added (%s)", qid, detail)


def dkim_unsigned(qid: str, why: str) -> None:
    _line(INFO, "%s: not DKIM-signed: %s", qid, why)


def mta_sts_policy(domain: str, policy_id: str, mode: str, max_age: int, mx: str) -> None:
    """A domain's MTA-STS policy was fetched (and cached)."""
    _line(INFO, "mta-sts: policy of %s fetched: id=%s mode=%s max_age=%d mx=%s", domain, policy_id, mode, max_age, mx)


def mta_sts_fetch_failed(domain: str, policy_id: str, result_type: str, detail: str, cached_id: str) -> None:
    """A domain announces an MTA-STS policy that could not be fetched or parsed."""
    using = f"using the cached policy id={cached_id}" if cached_id else "no cached policy: delivering as without one"
    _line(WARNING, "mta-sts: policy of %s (id=%s) not had: %s: %s; %s", domain, policy_id, result_type, detail, using)


def tls_rpt_failure(qid: str, policy_type: str, domain: str, mx_host: str, result_type: str, detail: str) -> None:
    """One outbound session's TLS failure, with what an RFC 8460 report would carry."""
    _line(
        WARNING,
        "%s: tls-rpt: policy-type=%s policy-domain=%s mx-host=%s result-type=%s: %s",
        qid,
        policy_type,
        domain,
        mx_host,
        result_type,
        detail,
    )


def auth_results(qid: str, summary: str, lookups: int, seconds: float) -> None:
    """The inbound checks' results of one message (mailauth/inbound.py)."""
    _line(INFO, "%s: authentication: %s (dns_lookups=%d, %.3fs)", qid, summary, lookups, seconds)


def milter_reject(session: str, peer: str, stage: str, milter: str, reply: object, detail: str = "") -> None:
    """A milter refused a command (its own reply, or reject/tempfail)."""
    extra = f"; {detail}" if detail else ""
    _line(INFO, "%s: milter-reject: %s from %s: %s; milter=%s%s", session, stage, peer, reply, milter, extra)


def milter_problem(session: str, milter: str, stage: str, why: str, action: str) -> None:
    """A milter could not be used (down, timed out, broke the protocol): its default action."""
    _line(WARNING, "%s: milter %s: %s at %s; milter.default_action=%s", session, milter, why, stage, action)


def milter_discarded(qid: str, session: str, why: str) -> None:
    """A milter had the message discarded: answered 250, kept nowhere."""
    _line(INFO, "%s: milter-discard: %s (session %s)", qid, why, session)


def milter_changed(qid: str, what: str) -> None:
    """What the milters changed of an accepted message, before its commit."""
    _line(INFO, "%s: milter: %s", qid, what)


def held(qid: str, why: str) -> None:
    """A message was accepted onto the hold queue (a milter's quarantine)."""
    _line(INFO, "%s: put on hold: %s", qid, why)


def spool_problem(what: str) -> None:
    _line(WARNING, "spool: %s", what)


def warning(what: str) -> None:
    _line(WARNING, "%s", what)


def error(what: str) -> None:
    _line(ERROR, "%s", what)


def supervisor(what: str, *, problem: bool = False) -> None:
    """Worker life cycle; a worker that died or could not start is a warning."""
    _line(WARNING if problem else INFO, "supervisor: %s", what)
