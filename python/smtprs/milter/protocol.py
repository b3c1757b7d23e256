"""The milter protocol (Sendmail's libmilter, version 6, as Postfix speaks it):
the packets, encoded and decoded, with no I/O.

The format is that of libmilter's ``mfdef.h`` and Sendmail's
``libmilter/docs`` (also described in the ``milter-protocol.txt`` notes that
pymilter and purepythonmilter follow): every packet is a 32-bit length in
network byte order, counting the one-octet command that follows, then the
command's data.  Strings are NUL-terminated; numbers are 32-bit (16-bit for
the port of SMFIC_CONNECT), in network order.

The MTA (we) sends commands (``SMFIC_*``); the milter answers with replies
(``SMFIR_*``).  Both directions are here, so that a test can play the milter
with the same code it checks (tests/unit/test_milter_protocol.py) -- but only
the MTA side is used by smtprs.

Bad input never raises anything but ``ProtocolError``: a length of 0 or over
``max_packet``, a reply code we do not know, a string without its NUL, a
number field too short.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# The header changes are smtprs.rewrite's (shared with hooks): a milter's
# SMFIR_ADDHEADER, SMFIR_INSHEADER and SMFIR_CHGHEADER decode to them.
from ..rewrite import AddHeader as AddHeader
from ..rewrite import ChangeHeader as ChangeHeader
from ..rewrite import InsertHeader as InsertHeader

VERSION = 6  # SMFI_PROT_VERSION
MIN_VERSION = 2  # the oldest milter we talk to (as Postfix)
CHUNK_SIZE = 65535  # MILTER_CHUNK_SIZE: the largest body chunk we send
# The largest packet we accept from a milter: libmilter sends at most 64 KiB
# of data per packet unless SMFIP_MDS_256K/1M were negotiated (we never offer
# them), so this bound leaves room for a milter that splits badly but stops a
# length prefix of gigabytes from being believed.
MAX_PACKET = 1024 * 1024 + 64

# -- commands (MTA -> milter) ---------------------------------------------------
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

COMMANDS = frozenset(
    {
        SMFIC_ABORT,
        SMFIC_BODY,
        SMFIC_CONNECT,
        SMFIC_MACRO,
        SMFIC_BODYEOB,
        SMFIC_HELO,
        SMFIC_QUIT_NC,
        SMFIC_HEADER,
        SMFIC_MAIL,
        SMFIC_EOH,
        SMFIC_OPTNEG,
        SMFIC_QUIT,
        SMFIC_RCPT,
        SMFIC_DATA,
        SMFIC_UNKNOWN,
    }
)

# -- replies (milter -> MTA) ----------------------------------------------------
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# -- actions a milter may ask for (SMFIF_*, OPTNEG's second number) --------------
SMFIF_ADDHDRS = 0x001
SMFIF_CHGBODY = 0x002
SMFIF_ADDRCPT = 0x004
SMFIF_DELRCPT = 0x008
SMFIF_CHGHDRS = 0x010
SMFIF_QUARANTINE = 0x020
SMFIF_CHGFROM = 0x040
SMFIF_ADDRCPT_PAR = 0x080
SMFIF_SETSYMLIST = 0x100
ALL_ACTIONS = 0x1FF

# -- protocol steps (SMFIP_*, OPTNEG's third number) ------------------------------
SMFIP_NOCONNECT = 0x1
SMFIP_NOHELO = 0x2
SMFIP_NOMAIL = 0x4
SMFIP_NORCPT = 0x8
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000
SMFIP_MDS_256K = 0x10000000
SMFIP_MDS_1M = 0x20000000

# What we can do of the protocol steps: leave any step out, send no reply
# for it, skip the rest of the body.  Not offered: SMFIP_RCPT_REJ (we send
# only the recipients we accepted), SMFIP_HDR_LEADSPC (header values go
# without the space after the colon, as Sendmail and Postfix do by default),
# the larger packet sizes (MDS_*).
OUR_STEPS = (
    SMFIP_NOCONNECT
    | SMFIP_NOHELO
    | SMFIP_NOMAIL
    | SMFIP_NORCPT
    | SMFIP_NOBODY
    | SMFIP_NOHDRS
    | SMFIP_NOEOH
    | SMFIP_NR_HDR
    | SMFIP_NOUNKNOWN
    | SMFIP_NODATA
    | SMFIP_SKIP
    | SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_MAIL
    | SMFIP_NR_RCPT
    | SMFIP_NR_DATA
    | SMFIP_NR_UNKN
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY
)

# The stages of SMFIR_SETSYMLIST (SMFIM_*), by the command whose macros they name
MACRO_STAGES: dict[int, bytes] = {
    0: SMFIC_CONNECT,
    1: SMFIC_HELO,
    2: SMFIC_MAIL,
    3: SMFIC_RCPT,
    4: SMFIC_DATA,
    5: SMFIC_BODYEOB,
    6: SMFIC_EOH,
}

# For each command: the step flag that leaves it out and the one that says
# the milter sends no reply to it.
STEP_FLAGS: dict[bytes, tuple[int, int]] = {
    SMFIC_CONNECT: (SMFIP_NOCONNECT, SMFIP_NR_CONN),
    SMFIC_HELO: (SMFIP_NOHELO, SMFIP_NR_HELO),
    SMFIC_MAIL: (SMFIP_NOMAIL, SMFIP_NR_MAIL),
    SMFIC_RCPT: (SMFIP_NORCPT, SMFIP_NR_RCPT),
    SMFIC_DATA: (SMFIP_NODATA, SMFIP_NR_DATA),
    SMFIC_HEADER: (SMFIP_NOHDRS, SMFIP_NR_HDR),
    SMFIC_EOH: (SMFIP_NOEOH, SMFIP_NR_EOH),
    SMFIC_BODY: (SMFIP_NOBODY, SMFIP_NR_BODY),
}

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_OPTNEG = struct.Struct("!III")


class ProtocolError(Exception):
    """A packet that breaks the protocol (the connection cannot go on)."""


# -- packets -------------------------------------------------------------------
def packet(code: bytes, data: bytes = b"") -> bytes:
    """One packet: the length (of the code and data), the code, the data."""
    return _U32.pack(len(data) + 1) + code + data


class Decoder:
    """Splits a byte stream into packets; bounded: a length over ``max_packet`` is an error."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> tuple[bytes, bytes] | None:
        """The next whole packet as (code, data), or None if more bytes are needed."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (n,) = _U32.unpack_from(buf)
        if n == 0:
            raise ProtocolError("a packet of length 0")
        if n > self.max_packet:
            raise ProtocolError(f"a packet of {n} octets (at most {self.max_packet})")
        if len(buf) < 4 + n:
            return None
        code = bytes(buf[4:5])
        data = bytes(buf[5 : 4 + n])
        del buf[: 4 + n]
        return code, data

    @property
    def wanted(self) -> int:
        """How many more octets the packet being read needs (at least 1)."""
        if len(self._buf) < 4:
            return 4 - len(self._buf)
        n: int = _U32.unpack_from(self._buf)[0]
        return max(1, 4 + n - len(self._buf))


def _cstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return raw.replace(b"\0", b"") + b"\0"


def _strings(data: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings (the last one must be terminated)."""
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: a string without its NUL")
    return data[:-1].split(b"\0")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# -- the MTA's commands ------------------------------------------------------------
def optneg(version: int = VERSION, actions: int = ALL_ACTIONS, steps: int = OUR_STEPS) -> bytes:
    return packet(SMFIC_OPTNEG, _OPTNEG.pack(version, actions, steps))


def macros(stage: bytes, values: dict[str, str]) -> bytes:
    """SMFIC_MACRO: the macros for the command ``stage`` (sent just before it)."""
    return packet(SMFIC_MACRO, stage + b"".join(_cstr(k) + _cstr(v) for k, v in values.items()))


def connect(hostname: str, family: bytes, port: int, address: str) -> bytes:
    """SMFIC_CONNECT: family is b"4", b"6", b"L" (unix) or b"U" (unknown: no port or address)."""
    if family == b"U":
        return packet(SMFIC_CONNECT, _cstr(hostname) + family)
    return packet(SMFIC_CONNECT, _cstr(hostname) + family + _U16.pack(port & 0xFFFF) + _cstr(address))


def helo(name: str) -> bytes:
    return packet(SMFIC_HELO, _cstr(name))


def mail(sender: str, args: list[str]) -> bytes:
    """SMFIC_MAIL: the sender with its angle brackets, then the ESMTP arguments."""
    return packet(SMFIC_MAIL, b"".join(_cstr(a) for a in [f"<{sender}>", *args]))


def rcpt(recipient: str, args: list[str]) -> bytes:
    return packet(SMFIC_RCPT, b"".join(_cstr(a) for a in [f"<{recipient}>", *args]))


def header(name: bytes, value: bytes) -> bytes:
    return packet(SMFIC_HEADER, _cstr(name) + _cstr(value))


def body(chunk: bytes) -> bytes:
    return packet(SMFIC_BODY, chunk)


# -- decoding commands (the milter's side: tests) ----------------------------------
@dataclass(frozen=True)
class Command:
    """A decoded MTA command: its code and its fields."""

    code: bytes
    args: list[str] = field(default_factory=list)  # the strings (CONNECT: hostname, address; MACRO: name, value, ...)
    numbers: tuple[int, ...] = ()  # OPTNEG: version, actions, steps; CONNECT: port
    family: bytes = b""  # CONNECT
    stage: bytes = b""  # MACRO: the command the macros are for
    data: bytes = b""  # BODY: the chunk


def decode_command(code: bytes, data: bytes) -> Command:
    if code not in COMMANDS:
        raise ProtocolError(f"unknown command {code!r}")
    if code == SMFIC_OPTNEG:
        if len(data) < _OPTNEG.size:
            raise ProtocolError("OPTNEG: too short")
        return Command(code, numbers=_OPTNEG.unpack_from(data))
    if code == SMFIC_BODY:
        return Command(code, data=data)
    if code == SMFIC_MACRO:
        if not data:
            raise ProtocolError("MACRO: no stage")
        strings = _strings(data[1:], "MACRO") if len(data) > 1 else []
        return Command(code, args=[_text(s) for s in strings], stage=data[:1])
    if code == SMFIC_CONNECT:
        end = data.find(b"\0")
        if end < 0 or len(data) < end + 2:
            raise ProtocolError("CONNECT: too short")
        host, family = _text(data[:end]), data[end + 1 : end + 2]
        if family == b"U":
            return Command(code, args=[host], family=family)
        rest = data[end + 2 :]
        if len(rest) < 3:
            raise ProtocolError("CONNECT: too short")
        (port,) = _U16.unpack_from(rest)
        return Command(
            code, args=[host, *[_text(s) for s in _strings(rest[2:], "CONNECT")]], numbers=(port,), family=family
        )
    if not data:
        return Command(code)
    return Command(code, args=[_text(s) for s in _strings(data, _text(code))])


# -- the milter's replies ----------------------------------------------------------
@dataclass(frozen=True)
class OptNeg:
    """The milter's answer to SMFIC_OPTNEG.  A version 6 milter may append the
    macros it wants per stage (smfi_setsymlist): a 32-bit stage, then the names."""

    version: int
    actions: int
    steps: int
    symlists: tuple[tuple[bytes, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Verdict:
    """accept, continue, reject, tempfail, discard, skip, progress, shutdown, conn_fail."""

    kind: str


@dataclass(frozen=True)
class ReplyCode:
    """SMFIR_REPLYCODE: the whole SMTP reply the milter wants given."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ReplaceBody:
    chunk: bytes  # one piece of the new body (several packets, in order, make it)


@dataclass(frozen=True)
class AddRcpt:
    address: str
    args: str = ""


@dataclass(frozen=True)
class DelRcpt:
    address: str


@dataclass(frozen=True)
class ChangeFrom:
    address: str
    args: str = ""


@dataclass(frozen=True)
class Quarantine:
    reason: str


@dataclass(frozen=True)
class SetSymList:
    stage: bytes  # the command whose macros these are
    names: tuple[str, ...]


Response = (
    OptNeg
    | Verdict
    | ReplyCode
    | AddHeader
    | InsertHeader
    | ChangeHeader
    | ReplaceBody
    | AddRcpt
    | DelRcpt
    | ChangeFrom
    | Quarantine
    | SetSymList
)

_VERDICTS = {
    SMFIR_ACCEPT: "accept",
    SMFIR_CONTINUE: "continue",
    SMFIR_REJECT: "reject",
    SMFIR_TEMPFAIL: "tempfail",
    SMFIR_DISCARD: "discard",
    SMFIR_SKIP: "skip",
    SMFIR_PROGRESS: "progress",
    SMFIR_SHUTDOWN: "shutdown",
    SMFIR_CONN_FAIL: "conn_fail",
}
_VERDICT_CODES = {v: k for k, v in _VERDICTS.items()}


def _address(raw: str) -> str:
    """``<a@b>`` or ``a@b`` -> ``a@b``."""
    raw = raw.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    return raw


def parse_replycode(text: str) -> ReplyCode:
    """``550 5.7.1 text`` (lines ``550-5.7.1 a\\r\\n550 5.7.1 b`` too): a 4xx or 5xx reply."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines:
        raise ProtocolError("REPLYCODE: empty")
    first = lines[0]
    if len(first) < 3 or not first[:3].isdigit() or first[0] not in "45" or (len(first) > 3 and first[3] not in " -"):
        raise ProtocolError(f"REPLYCODE: not a 4xx or 5xx reply: {first[:40]!r}")
    code = int(first[:3])
    enhanced: str | None = None
    out = []
    for i, line in enumerate(lines):
        if line[:3] != first[:3]:
            raise ProtocolError("REPLYCODE: lines with different codes")
        rest = line[4:]
        word, _, after = rest.partition(" ")
        parts = word.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] == first[0]:
            if i == 0:
                enhanced = word
            rest = after
        out.append("".join(c if 32 <= ord(c) < 127 or ord(c) > 127 else " " for c in rest) or "Error")
    return ReplyCode(code, enhanced, tuple(out))


def decode_response(code: bytes, data: bytes) -> Response:
    """One reply packet as a value; ProtocolError if it is malformed or unknown."""
    if code in _VERDICTS:
        return Verdict(_VERDICTS[code])
    if code == SMFIC_OPTNEG:
        if len(data) < _OPTNEG.size:
            raise ProtocolError("OPTNEG reply: too short")
        version, actions, steps = _OPTNEG.unpack_from(data)
        lists = []
        rest = data[_OPTNEG.size :]
        while rest:
            if len(rest) < 5:
                raise ProtocolError("OPTNEG reply: a macro list too short")
            (stage,) = _U32.unpack_from(rest)
            end = rest.find(b"\0", 4)
            if stage not in MACRO_STAGES or end < 0:
                raise ProtocolError(f"OPTNEG reply: a bad macro list (stage {stage})")
            names = tuple(n for n in _text(rest[4:end]).split() if n)
            lists.append((MACRO_STAGES[stage], names))
            rest = rest[end + 1 :]
        return OptNeg(version, actions, steps, tuple(lists))
    if code == SMFIR_REPLBODY:
        return ReplaceBody(data)
    if code == SMFIR_REPLYCODE:
        (text,) = _strings(data, "REPLYCODE")[:1]
        return parse_replycode(_text(text))
    if code in (SMFIR_INSHEADER, SMFIR_CHGHEADER):
        if len(data) < 4:
            raise ProtocolError("header change: too short")
        (index,) = _U32.unpack_from(data)
        parts = _strings(data[4:], "header change")
        if len(parts) != 2 or not parts[0]:
            raise ProtocolError("header change: expected a name and a value")
        name, value = _text(parts[0]), _text(parts[1])
        return InsertHeader(index, name, value) if code == SMFIR_INSHEADER else ChangeHeader(index, name, value)
    if code == SMFIR_ADDHEADER:
        parts = _strings(data, "ADDHEADER")
        if len(parts) != 2 or not parts[0]:
            raise ProtocolError("ADDHEADER: expected a name and a value")
        return AddHeader(_text(parts[0]), _text(parts[1]))
    if code in (SMFIR_ADDRCPT, SMFIR_DELRCPT, SMFIR_ADDRCPT_PAR, SMFIR_CHGFROM):
        parts = _strings(data, "envelope change")
        address = _address(_text(parts[0]))
        if not address and code != SMFIR_CHGFROM:
            raise ProtocolError("envelope change: no address")
        args = _text(parts[1]) if len(parts) > 1 else ""
        if code == SMFIR_DELRCPT:
            return DelRcpt(address)
        if code == SMFIR_CHGFROM:
            return ChangeFrom(address, args)
        return AddRcpt(address, args)
    if code == SMFIR_QUARANTINE:
        parts = _strings(data, "QUARANTINE")
        return Quarantine(_text(parts[0]))
    if code == SMFIR_SETSYMLIST:
        if len(data) < 4:
            raise ProtocolError("SETSYMLIST: too short")
        (stage,) = _U32.unpack_from(data)
        if stage not in MACRO_STAGES:
            raise ProtocolError(f"SETSYMLIST: unknown stage {stage}")
        parts = _strings(data[4:], "SETSYMLIST")
        names = tuple(n for n in _text(parts[0]).split() if n)
        return SetSymList(MACRO_STAGES[stage], names)
    raise ProtocolError(f"unknown reply {code!r}")


def encode_response(r: Response) -> bytes:
    """A reply as a milter sends it (the inverse of ``decode_response``: tests' milters)."""
    if isinstance(r, Verdict):
        return packet(_VERDICT_CODES[r.kind])
    if isinstance(r, OptNeg):
        lists = b"".join(_U32.pack(_stage_number(st)) + _cstr(" ".join(names)) for st, names in r.symlists)
        return packet(SMFIC_OPTNEG, _OPTNEG.pack(r.version, r.actions, r.steps) + lists)
    if isinstance(r, ReplaceBody):
        return packet(SMFIR_REPLBODY, r.chunk)
    if isinstance(r, ReplyCode):
        text = "\r\n".join(
            f"{r.code}{'-' if i < len(r.lines) - 1 else ' '}{r.enhanced + ' ' if r.enhanced else ''}{line}"
            for i, line in enumerate(r.lines)
        )
        return packet(SMFIR_REPLYCODE, _cstr(text))
    if isinstance(r, InsertHeader):
        return packet(SMFIR_INSHEADER, _U32.pack(r.index) + _cstr(r.name) + _cstr(r.value))
    if isinstance(r, ChangeHeader):
        return packet(SMFIR_CHGHEADER, _U32.pack(r.index) + _cstr(r.name) + _cstr(r.value))
    if isinstance(r, AddHeader):
        return packet(SMFIR_ADDHEADER, _cstr(r.name) + _cstr(r.value))
    if isinstance(r, AddRcpt):
        if r.args:
            return packet(SMFIR_ADDRCPT_PAR, _cstr(f"<{r.address}>") + _cstr(r.args))
        return packet(SMFIR_ADDRCPT, _cstr(f"<{r.address}>"))
    if isinstance(r, DelRcpt):
        return packet(SMFIR_DELRCPT, _cstr(f"<{r.address}>"))
    if isinstance(r, ChangeFrom):
        return packet(SMFIR_CHGFROM, _cstr(f"<{r.address}>") + (_cstr(r.args) if r.args else b""))
    if isinstance(r, Quarantine):
        return packet(SMFIR_QUARANTINE, _cstr(r.reason))
    return packet(SMFIR_SETSYMLIST, _U32.pack(_stage_number(r.stage)) + _cstr(" ".join(r.names)))


def _stage_number(stage: bytes) -> int:
    return next(k for k, v in MACRO_STAGES.items() if v == stage)
