"""The pickup directory (``<data_dir>/pickup/``): mail written by ``sendmail``
(smtprs/sendmail.py) when no server answered, taken into the spool by the
running server, as Postfix's postdrop writes the maildrop and its pickup
daemon reads it.

A pickup file is written durably before ``sendmail`` reports success: the
content goes to a temporary name beginning with ``.`` (which the importer
never reads), is fsync'd, renamed to its final name, and the directory is
fsync'd.  Its format::

    smtprs-pickup 1\\n
    {"sender": ..., "recipients": [...], "params": {...}, "user": ..., "uid": ..., "time": ...}\\n
    <the message, CRLF line ends, not dot-stuffed>

The server (worker 0; daemon.py) imports what it finds at start and then every
``INTERVAL`` seconds: each file becomes a spool writer (our Received field,
then the content), is committed with its envelope (the one durable step of
the spool) and handed to the scheduler, and only then is the file unlinked.
A crash between the commit and the unlink imports the file again at the next
start: a duplicate, never a loss.  A file that cannot be read as a pickup
file (damaged, not ours, too large) is moved to ``pickup/corrupt/`` with a
warning and left for the administrator.  The submitting user in the trace
field is the file's owner as the file system says; only for a file owned by
root, the server's own user or the directory's owner (root's sendmail gives
its files to the directory's owner so that the server can read them) is the
uid the file names taken.  Locally submitted mail is not subject to the relay policy: writing
into this directory is the right to send (as Postfix's pickup).

Locally submitted mail is DKIM-signed as mail from a trusted network is
(``dkim.keys``: the From: domain's key, the signature before our Received
field), so that a cron job's or a web application's mail verifies whichever
way ``sendmail`` handed it over.  Milters and the Python hooks are not run on
it, as Postfix runs its ``smtpd_milters`` on SMTP mail only
(``non_smtpd_milters`` is empty by default).

This module writes and reads the files and imports them into a
``SpoolBackend``; it knows nothing of SMTP.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import pwd
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .. import maillog
from .._threads import run_sync
from ..envelope import Envelope, Recipient
from ..errors import SpoolError
from .backend import SpoolBackend

if TYPE_CHECKING:  # (sendmail imports this module to write files: it needs no DKIM)
    from ..mailauth.dkim import Signer

MAGIC = b"smtprs-pickup 1\n"
INTERVAL = 1.0  # seconds between two looks into the directory while running
MAX_META = 1 << 20  # the envelope line: at most 1 MiB (recipients are bounded by it)
STALE_TMP = 3600.0  # a temporary file this old was left by a sendmail that died: removed


class PickupError(Exception):
    """A file that is not a readable pickup file (it is moved aside, never lost)."""


@dataclass
class Entry:
    sender: str
    recipients: list[str]
    content: bytes
    params: dict[str, str] = field(default_factory=dict)
    user: str = ""
    uid: int = -1
    time: float = 0.0


def directory(data_dir: Path) -> Path:
    return Path(data_dir) / "pickup"


def encode(entry: Entry) -> bytes:
    meta = {
        "sender": entry.sender,
        "recipients": entry.recipients,
        "params": entry.params,
        "user": entry.user,
        "uid": entry.uid,
        "time": entry.time,
    }
    return MAGIC + json.dumps(meta, ensure_ascii=False).encode() + b"\n" + entry.content


def decode(raw: bytes, max_size: int) -> Entry:
    """A pickup file's bytes as an Entry; raises PickupError naming what is wrong."""
    if not raw.startswith(MAGIC):
        raise PickupError("not a pickup file (no smtprs-pickup 1 line)")
    end = raw.find(b"\n", len(MAGIC), len(MAGIC) + MAX_META + 1)
    if end < 0:
        raise PickupError("no envelope line")
    try:
        meta = json.loads(raw[len(MAGIC) : end])
    except ValueError as e:
        raise PickupError(f"envelope line is not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise PickupError("envelope line is not a JSON object")
    sender, rcpts, params = meta.get("sender"), meta.get("recipients"), meta.get("params", {})
    if not isinstance(sender, str) or not isinstance(rcpts, list) or not all(isinstance(r, str) and r for r in rcpts):
        raise PickupError("envelope line lacks a sender or recipients")
    if not rcpts:
        raise PickupError("no recipients")
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
        raise PickupError("params is not a map of strings")
    content = raw[end + 1 :]
    if len(content) > max_size:
        raise PickupError(f"content of {len(content)} octets is over smtpd.max_message_size ({max_size})")
    user, uid, when = meta.get("user", ""), meta.get("uid", -1), meta.get("time", 0.0)
    return Entry(
        sender,
        rcpts,
        content,
        params,
        user if isinstance(user, str) else "",
        uid if isinstance(uid, int) else -1,
        float(when) if isinstance(when, (int, float)) else 0.0,
    )


def write(pickup_dir: Path, entry: Entry, *, fsync: bool = True) -> Path:
    """Write ``entry`` durably into the pickup directory (temp name, fsync, rename,
    fsync of the directory); returns its final path.  Raises OSError."""
    root = os.geteuid() == 0
    if not pickup_dir.is_dir():
        pickup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if root:  # made by root before the server ever ran: it belongs to the data directory's owner
            st = os.stat(pickup_dir.parent)
            os.chown(pickup_dir, st.st_uid, st.st_gid)
    name = f"{int(time.time())}.{os.getpid()}.{secrets.token_hex(6)}"
    tmp = pickup_dir / f".tmp.{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            if root:  # so that a server running as its own user can read it
                st = os.stat(pickup_dir)
                os.fchown(fd, st.st_uid, st.st_gid)
            view = memoryview(encode(entry))
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        final = pickup_dir / name
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        dfd = os.open(pickup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return final


def _address_text(text: str) -> str:
    return "".join(c if 32 < ord(c) < 127 and c not in "()\\" else "?" for c in text)[:64]


def received(hostname: str, qid: str, uid: int, user: str, rcpts: list[str]) -> bytes:
    """Our trace field for a locally submitted message (as Postfix's
    ``Received: by HOST (Postfix, from userid N) id ID; DATE``)."""
    who = f"from userid {uid}" if uid >= 0 else "local"
    if user:
        who += f" ({_address_text(user)})"
    lines = [f"Received: by {hostname} (smtprs, {who})", f"\twith local id {qid}"]
    date = email.utils.formatdate(localtime=True)
    lines.append(f"\tfor <{rcpts[0]}>; {date}" if len(rcpts) == 1 else f"\t; {date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _read(path: Path, max_size: int) -> tuple[Entry, int]:
    """(the entry, the owner's uid); raises PickupError or OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        limit = max_size + len(MAGIC) + MAX_META + 2
        if st.st_size > limit:
            raise PickupError(f"{st.st_size} octets, over smtpd.max_message_size ({max_size}) and the envelope")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return decode(b"".join(chunks), max_size), st.st_uid


def _user_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return ""


def _set_aside(pickup_dir: Path, path: Path, why: str) -> None:
    aside = pickup_dir / "corrupt"
    try:
        aside.mkdir(mode=0o700, exist_ok=True)
        os.rename(path, aside / path.name)
        maillog.warning(f"pickup: {path.name}: {why}; moved to {aside}")
    except OSError as e:
        maillog.warning(f"pickup: {path.name}: {why}; cannot move it aside: {e.strerror or e}")


def pending(pickup_dir: Path) -> list[Path]:
    """The files waiting, oldest name first (temporary names and directories left out);
    temporary files older than STALE_TMP (a sendmail that died before its rename) are removed."""
    try:
        entries = list(os.scandir(pickup_dir))
    except FileNotFoundError:
        return []
    out: list[Path] = []
    now = time.time()
    for e in entries:
        if e.name.startswith("."):
            try:
                if e.name.startswith(".tmp.") and now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP:
                    os.unlink(e.path)
            except OSError:
                pass
            continue
        if e.is_file(follow_symlinks=False):
            out.append(Path(e.path))
    return sorted(out, key=lambda p: p.name)


async def import_one(
    path: Path,
    spool: SpoolBackend,
    submit: Callable[[Envelope], None],
    hostname: str,
    max_size: int,
    dkim: Signer | None = None,
) -> str | None:
    """Take one pickup file into the spool (DKIM-signed when ``dkim`` has a key
    for its From: domain); its queue id, or None (set aside, or left for the
    next look after a spool error)."""
    pickup_dir = path.parent
    try:
        entry, owner = await run_sync(lambda: _read(path, max_size))
    except FileNotFoundError:
        return None  # (taken meanwhile)
    except PickupError as e:
        _set_aside(pickup_dir, path, str(e))
        return None
    except PermissionError as e:
        _set_aside(pickup_dir, path, f"not readable by the server: {e.strerror or e}")
        return None
    except OSError as e:
        maillog.warning(f"pickup: {path.name}: cannot read it: {e.strerror or e}; trying again later")
        return None
    try:
        writer = spool.create()
    except SpoolError as e:
        maillog.spool_problem(f"pickup: {path.name}: {e}; trying again later")
        return None
    try:
        dir_owner = os.stat(pickup_dir).st_uid
    except OSError:
        dir_owner = 0
    if owner in (0, os.geteuid(), dir_owner) and entry.uid >= 0:
        # written by root, us, or the directory's owner (root's files are given to it): the submitter it names
        uid, user = entry.uid, entry.user
    else:
        uid, user = owner, _user_of(owner)  # anyone else: the file system's word, not the file's
    writer.write(received(hostname, writer.queue_id, uid, user, entry.recipients))
    writer.write(entry.content)
    if dkim is not None:
        await _sign(dkim, writer.queue_id, entry.content, writer.prepend)
    env = Envelope(
        queue_id=writer.queue_id,
        sender=entry.sender,
        recipients=[Recipient(r) for r in entry.recipients],
        arrival=time.time(),
        size=writer.size,
        protocol="local",
        params=entry.params,
    )
    with trio.CancelScope(shield=True):  # a shutdown waits for the commit and the unlink
        try:
            await spool.commit(writer, env)
        except SpoolError as e:
            maillog.spool_problem(f"pickup: {path.name}: {e}; trying again later")
            return None
        submit(env)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:  # it will be imported again: a duplicate, not a loss
            maillog.warning(f"pickup: {path.name}: queued as {env.queue_id} but not removed: {e.strerror or e}")
    return env.queue_id


async def _sign(dkim: Signer, qid: str, content: bytes, prepend: Callable[[bytes], None]) -> None:
    """The DKIM-Signature field of ``content`` before everything in the spool
    file, as the intake signs SMTP mail; a message that cannot be signed goes
    unsigned, logged (the body is hashed in a worker thread: it may be large)."""
    from ..mailauth.dkim import MessageSigner

    ms = MessageSigner(dkim)
    await run_sync(lambda: ms.feed(content))
    field, detail = await ms.signature()
    if field is None:
        maillog.dkim_unsigned(qid, detail)
        return
    prepend(field)
    maillog.dkim_signed(qid, detail)


async def run(
    pickup_dir: Path,
    spool: SpoolBackend,
    submit: Callable[[Envelope], None],
    hostname: str,
    max_size: Callable[[], int],
    dkim: Callable[[], Signer | None] = lambda: None,
    *,
    interval: float = INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Import what is waiting now, then look again every ``interval`` seconds until cancelled."""
    try:
        pickup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        maillog.warning(f"pickup: cannot create {pickup_dir}: {e.strerror or e}")
    task_status.started()
    while True:
        for path in await run_sync(lambda: pending(pickup_dir)):
            await import_one(path, spool, submit, hostname, max_size(), dkim())
        await trio.sleep(interval)
