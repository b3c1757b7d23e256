"""Opening the segment spool: reading what an earlier run left, and setting
aside what cannot be read.

``SpoolRecovery`` is the start-up half of ``Spool`` (spool.py), kept apart
because it runs once per start while the rest runs per message: it creates
the directories, indexes files/ and every segment (M records add a message,
D records finish one), tells a torn tail (a crash mid-batch, never
acknowledged: ignored) from damage (copied to corrupt/ and logged), and
clears content that no 250 was given for.  A message whose content file is
gone is damage only if no D record finished it: a delivered big message's
file is unlinked after its D record is durable, so its M record is still in
the segment at the next start and must not be reported (issue 20 part 9).
Nothing here is on the hot path.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import zlib
from pathlib import Path

from .. import maillog
from ..envelope import Envelope
from ..errors import SpoolError
from .records import HEAD, INLINE, KIND_DONE, KIND_MESSAGE, MAGIC, MHEAD, Entry, fsync_dir, regular_file, unlink_quietly


class SpoolRecovery:
    """Start-up of the segment spool; the attributes are Spool's."""

    root: Path
    seg_dir: Path
    files_dir: Path
    corrupt_dir: Path
    fsync: bool
    _index: dict[str, Entry]
    _fresh: dict[str, Envelope]
    _live: dict[int, int]
    _segments: list[int]
    _active: int
    # M records whose own content file is gone, by queue id -> segment: damage
    # unless a D record (in the same segment or a later one) says the message
    # was finished, as every delivered big message is (its file is unlinked
    # after its D record is durable); judged once every segment is read
    _missing: dict[str, tuple[int, bytes]]  # qid -> (segment, the envelope's JSON)

    def _close_active(self) -> None:
        raise NotImplementedError

    def _drop_dead_segments(self) -> None:
        raise NotImplementedError

    def _seg_path(self, seg: int) -> Path:
        return self.seg_dir / f"{seg:012d}.seg"

    def open(self) -> list[str]:
        """Create the directories, read the segments and files, clear what no
        250 was ever given for, and return the ids of queued messages (oldest first).

        Damage is set aside (see the module docstring); an error that cannot be
        (the spool's own directories unreadable, a disk error on a directory)
        is a SpoolError with one clear line, never a traceback."""
        try:
            return self._open()
        except SpoolError:
            raise
        except OSError as e:
            raise SpoolError(f"cannot read the spool {self.root}: {e}") from e

    def _open(self) -> list[str]:
        try:
            self._make_dirs()
        except OSError as e:
            raise SpoolError(f"cannot use the spool directory {self.root}: {e.strerror or e}") from e
        self._close_active()
        self._index.clear()
        self._fresh.clear()
        self._live.clear()
        envs, contents = set(), set()
        for entry in os.scandir(self.files_dir):
            stem, _, ext = entry.name.rpartition(".")
            if not regular_file(entry):
                self._move_aside(Path(entry.path), "not a regular file")
            elif ext == "env":
                envs.add(stem)
            elif ext == "msg":
                contents.add(stem)
            elif ext == "tmp":
                unlink_quietly(Path(entry.path))
            else:
                self._move_aside(Path(entry.path), "not a spool file")
        for qid in envs - contents:
            self._move_aside(self.files_dir / f"{qid}.env", "envelope without content")
        for qid in envs & contents:
            self._index[qid] = Entry(0)
        self._segments = []
        for entry in os.scandir(self.seg_dir):
            stem, _, ext = entry.name.rpartition(".")
            if ext == "seg" and stem.isdigit() and regular_file(entry):
                self._segments.append(int(stem))
            else:
                self._move_aside(Path(entry.path), "not a segment")
        self._segments.sort()
        self._missing = {}
        for seg in list(self._segments):
            try:
                self._scan_segment(seg, contents)
            except OSError as e:  # unreadable (EIO, EACCES): set aside whole, never a crash loop
                self._segments.remove(seg)
                self._live.pop(seg, None)
                for qid in [q for q, entry in self._index.items() if entry.seg == seg]:
                    del self._index[qid]
                self._move_aside(self._seg_path(seg), f"unreadable segment: {e.strerror or e}")
        for qid, (seg, env) in sorted(self._missing.items()):  # queued, never finished, its content gone
            self._keep_envelope(qid, seg, env)
        self._missing = {}
        for qid in contents - set(self._index):  # content whose record never landed (no 250), or a finished one's
            unlink_quietly(self.files_dir / f"{qid}.msg")  # (the scan may have removed it already: not an error)
        self._active = (self._segments[-1] if self._segments else 0) + 1  # never append after a torn tail
        self._drop_dead_segments()
        if self.fsync:
            fsync_dir(self.files_dir)
        return sorted(self._index)

    def _make_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.corrupt_dir, self.seg_dir, self.files_dir):
            if (d.exists() or d.is_symlink()) and not d.is_dir():
                if d == self.corrupt_dir:
                    os.replace(d, d.with_name(f"corrupt.{int(time.time())}.{secrets.token_hex(3)}"))
                else:
                    self.corrupt_dir.mkdir(exist_ok=True)
                    self._move_aside(d, "a file where the spool keeps a directory")
            d.mkdir(exist_ok=True)

    def _scan_segment(self, seg: int, contents: set[str]) -> None:
        path = self._seg_path(seg)
        self._live.setdefault(seg, 0)
        with open(path, "rb") as fh:
            data = fh.read()
        pos = 0
        while pos + HEAD.size <= len(data):
            magic, kind, length, crc = HEAD.unpack_from(data, pos)
            start = pos + HEAD.size
            payload = data[start : start + length]
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                self._bad_tail(seg, path, data, pos)
                break
            if kind == KIND_MESSAGE:
                env_len, flags = MHEAD.unpack_from(payload, 0)
                env_off = start + MHEAD.size
                try:
                    qid = json.loads(payload[MHEAD.size : MHEAD.size + env_len])["queue_id"]
                except (ValueError, KeyError, TypeError):
                    maillog.spool_problem(f"segment {seg}: unreadable envelope at {pos}")
                    qid = None
                if qid is not None and qid not in self._index:
                    if flags & INLINE:
                        entry = Entry(seg, env_off, env_len, env_off + env_len, length - MHEAD.size - env_len)
                    elif qid in contents:
                        entry = Entry(seg, env_off, env_len, -1, 0)
                    else:
                        entry = None
                        # reported after the scan, unless a D record finishes it
                        self._missing[qid] = (seg, bytes(payload[MHEAD.size : MHEAD.size + env_len]))
                    if entry is not None:
                        self._index[qid] = entry
                        self._live[seg] += 1
            elif kind == KIND_DONE:
                qid = payload.decode("ascii", "replace")
                self._missing.pop(qid, None)  # finished: its file was meant to be gone
                entry = self._index.get(qid)
                if entry is not None and entry.seg:
                    del self._index[qid]
                    self._live[entry.seg] -= 1
                    if entry.content_off < 0:
                        try:
                            os.unlink(self.files_dir / f"{qid}.msg")
                        except FileNotFoundError:
                            pass
            pos = start + length

    def _bad_tail(self, seg: int, path: Path, data: bytes, pos: int) -> None:
        """What follows the last good record of a segment cannot be read.

        A crash in the middle of a batch leaves a short or garbled last record,
        or zeros (a file extended but not written), and nothing after it: that
        batch was never acknowledged, and the tail is ignored.  Anything else (a bad
        checksum with more records after it, foreign bytes) is damage: the
        records before it are used, and a copy of the whole segment is kept in
        corrupt/ for a human to look at.
        """
        tail = data[pos:]
        magic, _, length, _ = HEAD.unpack_from(data, pos)
        last = magic == MAGIC and pos + HEAD.size + length >= len(data)  # the last record, short or garbled
        torn = last or not tail.strip(b"\0")
        if torn:
            return
        target = self.corrupt_dir / f"{path.name}.{int(time.time())}.{secrets.token_hex(3)}"
        try:
            shutil.copyfile(path, target)
            where = f"a copy is in {target}"
        except OSError as e:
            where = f"no copy could be kept: {e.strerror or e}"
        maillog.spool_problem(
            f"segment {seg}: unreadable record at offset {pos} of {len(data)}; the {pos} octets before it are used, the rest is ignored ({where})"
        )

    def _keep_envelope(self, qid: str, seg: int, env: bytes) -> None:
        """A queued message whose content file is gone (deleted behind our
        back): it cannot be delivered; its envelope is kept in corrupt/ for a
        human to see who it was from and to, and the loss is logged."""
        target = self.corrupt_dir / f"{qid}.env.{int(time.time())}.{secrets.token_hex(3)}"
        try:
            target.write_bytes(env)
            where = f"its envelope is in {target}"
        except OSError as e:
            where = f"its envelope could not be kept: {e.strerror or e}"
        maillog.spool_problem(f"segment {seg}: content of {qid} is missing; moved aside ({where})")

    def _move_aside(self, path: Path, why: str) -> None:
        target = self.corrupt_dir / f"{path.name}.{int(time.time())}.{secrets.token_hex(3)}"
        try:
            os.replace(path, target)
            maillog.spool_problem(f"moved {path.name} to {target}: {why}")
        except OSError as e:
            maillog.spool_problem(f"cannot move {path} aside ({why}): {e}")
