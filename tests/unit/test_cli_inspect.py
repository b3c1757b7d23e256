"""``smtprs config show`` and ``smtprs route test`` (cli_inspect.py), without DNS:
the TOML round trip, -n, masking, and the expansion steps and exit codes.
The e2e file tests/e2e/test_route_test.py runs the command with a real dnsmasq."""

from __future__ import annotations

import dataclasses
import importlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from smtprs import _core, cli, cli_inspect, config
from smtprs.mailauth import keys
from smtprs.route.router import Router
from smtprs.smtpd import tls


@pytest.fixture(autouse=True)
def _no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $SMTPRS_CONFIG, no /etc/smtprs/smtprs.toml: -c or the defaults."""
    monkeypatch.delenv("SMTPRS_CONFIG", raising=False)
    monkeypatch.setattr(
        importlib.import_module("smtprs.config.load"), "SYSTEM_CONFIG", str(tmp_path / "absent" / "smtprs.toml")
    )


# the transport entries both test configurations use: one of each kind the router knows
TRANSPORT = """[relay.transport]
"lmtp.test" = "lmtp:[127.0.0.1]:24"
".sub.test" = "smtp:[10.0.0.5]:2525"
"Dave@example.test" = "discard:not wanted"
"bounce.test" = "error:5.1.1 gone away"
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------
# config show


def _every_table_config(tmp_path: Path) -> Path:
    """A configuration file setting a key in every table of the schema."""
    cert, key = tls.make_self_signed(tmp_path / "tls", "mx.test")
    pem, _ = keys.generate("ed25519-sha256")
    keys.write_private(tmp_path / "dkim.pem", pem)
    (tmp_path / "aliases").write_text("postmaster: alice\n")
    (tmp_path / "virtual").write_text("info@virt.test alice\n")
    path = tmp_path / "smtprs.toml"
    path.write_text(
        f"""
hostname = "mx.test"
data_dir = "{tmp_path / "data"}"
workers = 2
unsafe_no_fsync = true

[smtpd]
max_recipients = 7
[[smtpd.listeners]]
address = "127.0.0.1:2525"
[[smtpd.listeners]]
address = "127.0.0.1:2587"
mode = "submission"
milters = ["none"]
[smtpd.tls]
cert_file = "{cert}"
key_file = "{key}"
min_version = "TLSv1.3"
[smtpd.auth]
failure_delay = 0.5
[smtpd.auth.senders]
alice = ["alice@example.test", "*@dept.example.test"]

[local]
domains = ["example.test", "other.test"]
virtual_domains = ["virt.test"]
users = ["alice", "bob"]
aliases = "{tmp_path / "aliases"}"
virtual_map = "{tmp_path / "virtual"}"
recipient_delimiter = "+-"
mailbox_mode = "0750"
[local.mailboxes."carol@example.test"]
mbox = "/var/mail/carol"

[queue]
retry_min = 60
max_lifetime = 86400.5

[relay]
trusted_networks = ["127.0.0.0/8", "::1/128"]
relayhost = "[smart.test]:587"
auth_username = "relayuser"
auth_password = "s3cr\\"et"
{TRANSPORT}[relay.tls_policy]
"bank.test" = "verify"

[dns]
nameservers = ["127.0.0.1"]
port = 5353
timeout = 2.5

[pop3]
timeout = 700

[[dkim.keys]]
domain = "example.test"
selector = "s1"
key_file = "{tmp_path / "dkim.pem"}"
algorithm = "ed25519-sha256"

[mta_sts]
enabled = false

[dane]
mode = "opportunistic"

[mailauth]
enabled = true
[mailauth.spf]
fail_policy = "reject"
[mailauth.dmarc]
reject_policy = "quarantine-header"

[milter]
milters = ["inet:127.0.0.1:8891"]
[milter.macros]
connect = ["j", "{{client_addr}}"]

[log]
format = "json"

[metrics]
enabled = true

[screen.greylist]
enabled = true
exempt_domains = ["postmaster.test"]
"""
    )
    return path


def _tables(cls: type[Any], prefix: str = "") -> list[str]:
    """Every table of the schema (dataclass-valued fields), as dotted names."""
    out = []
    for f in dataclasses.fields(cls):
        tp = f.type if not isinstance(f.type, str) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default) or tp is not None and dataclasses.is_dataclass(tp):
            out.append(prefix + f.name)
            out += _tables(type(default), prefix + f.name + ".")
    return out


def test_the_test_config_sets_every_table(tmp_path: Path) -> None:
    """So that the round trip below covers every table (a new table fails here first)."""
    cfg = config.load(_every_table_config(tmp_path))
    diff = cli_inspect.differences(cfg, cli_inspect.defaults_like(str(tmp_path / "smtprs.toml")))
    for table in _tables(config.Config):
        node: Any = diff
        for part in table.split("."):
            assert part in node, f"the test configuration sets nothing in [{table}]"
            node = node[part]


def _round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path | None, *flags: str) -> Any:
    status, out, err = run(capsys, "config", "show", *(["-c", str(source)] if source else []), *flags)
    assert status == 0, err
    again = tmp_path / "again" / "smtprs.toml"  # another directory: the output must stand alone
    again.parent.mkdir(exist_ok=True)
    again.write_text(out)
    return out, config.load(again)


def test_defaults_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out, cfg = _round_trip(tmp_path, capsys, None)
    assert cfg == config.load(None)
    assert out.splitlines()[0].startswith("# smtprs config show: embedded defaults (no file: $SMTPRS_CONFIG (unset)")
    tree = tomllib.loads(out)
    names = [f.name for f in dataclasses.fields(config.Config)]
    tables = [n for n in names if isinstance(tree[n], dict)]
    # every key; the top-level values first (TOML wants them before any table), then the tables in schema order
    assert list(tree) == [n for n in names if n not in tables] + tables
    assert list(tree["smtpd"]) == [f.name for f in dataclasses.fields(config.Smtpd)]
    assert tree["smtpd"]["max_recipients"] == 100
    assert tree["relay"]["auth_password"] == ""  # an empty secret is no secret


def test_every_table_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _every_table_config(tmp_path)
    want = config.load(path)
    out, got = _round_trip(tmp_path, capsys, path, "--show-secrets")
    assert got == want
    assert out.splitlines()[0] == f"# smtprs config show: from {path}"
    # masked: the same configuration but for the secret, which reads as the mask
    out, got = _round_trip(tmp_path, capsys, path)
    assert 's3cr\\"et' not in out and 's3cr"et' not in out
    assert got.relay.auth_password == cli_inspect.MASK
    assert dataclasses.replace(got, relay=dataclasses.replace(got.relay, auth_password='s3cr"et')) == want


def test_non_default_round_trips_and_lists_only_differences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _every_table_config(tmp_path)
    status, out, _ = run(capsys, "config", "show", "-c", str(path), "-n", "--show-secrets")
    assert status == 0
    tree = tomllib.loads(out)
    assert tree["smtpd"]["max_recipients"] == 7
    assert "banner" not in tree["smtpd"]  # a default
    assert "max_failure_delay" not in tree["smtpd"]["auth"]
    assert tree["queue"] == {"retry_min": 60.0, "max_lifetime": 86400.5}
    assert tree["relay"]["transport"] == {
        "lmtp.test": "lmtp:[127.0.0.1]:24",
        ".sub.test": "smtp:[10.0.0.5]:2525",
        "Dave@example.test": "discard:not wanted",
        "bounce.test": "error:5.1.1 gone away",
    }
    again = tmp_path / "n.toml"
    again.write_text(out)
    assert config.load(again) == config.load(path)


def test_non_default_of_a_small_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only what the file changed; a data_dir the file does not set (resolved against
    its directory) is not a difference."""
    path = tmp_path / "smtprs.toml"
    path.write_text(
        '[smtpd]\nmax_recipients = 5\nbanner = "ESMTP smtprs"\n[relay]\nauth_username = "u"\nauth_password = "pw"\n'
    )
    status, out, _ = run(capsys, "config", "show", "-c", str(path), "-n")
    assert status == 0
    assert tomllib.loads(out) == {
        "smtpd": {"max_recipients": 5},
        "relay": {"auth_username": "u", "auth_password": "********"},
    }
    assert '# secrets are shown as "********"' in out
    status, out, _ = run(capsys, "config", "show", "-c", str(path), "-n", "--json")
    assert json.loads(out)["relay"]["auth_password"] == "********"


def test_non_default_of_the_defaults_is_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "smtprs.toml"
    path.write_text("# nothing\n")
    status, out, _ = run(capsys, "config", "show", "-c", str(path), "-n")
    assert status == 0
    assert tomllib.loads(out) == {}


def test_masking_names_password_and_secret_keys() -> None:
    tree = {
        "a": {"auth_password": "x", "client_secret": "y", "password_file": "", "other": "z"},
        "l": [{"secret": "q"}],
    }
    assert cli_inspect.mask_secrets(tree) == {
        "a": {"auth_password": "********", "client_secret": "********", "password_file": "", "other": "z"},
        "l": [{"secret": "********"}],
    }


def test_config_show_of_a_bad_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "smtprs.toml"
    path.write_text("[smtpd]\nmax_recipients = 0\n")
    status, out, err = run(capsys, "config", "show", "-c", str(path))
    assert (status, out) == (2, "")
    assert "smtpd.max_recipients" in err and "Traceback" not in err


def test_config_show_follows_smtprs_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[smtpd]\nmax_recipients = 9\n")
    monkeypatch.setenv("SMTPRS_CONFIG", str(path))
    status, out, _ = run(capsys, "config", "show", "-n")
    assert status == 0
    assert out.splitlines()[0] == f"# smtprs config show: from {path}"
    assert tomllib.loads(out) == {"smtpd": {"max_recipients": 9}}


# --------------------------------------------------------------------------
# route test (no DNS)


@pytest.fixture
def routing(tmp_path: Path) -> Path:
    (tmp_path / "aliases").write_text(
        "postmaster: root\nroot: alice\nteam: alice, bob+lists, carol@remote.test\nloop1: loop2\nloop2: loop1\n"
    )
    (tmp_path / "virtual").write_text("info@virt.test team\n@virt.test alice\n")
    path = tmp_path / "smtprs.toml"
    path.write_text(
        f"""data_dir = "{tmp_path / "data"}"
[local]
domains = ["example.test"]
virtual_domains = ["virt.test"]
users = ["alice", "bob", "root"]
aliases = "{tmp_path / "aliases"}"
virtual_map = "{tmp_path / "virtual"}"
[relay]
trusted_networks = ["10.1.0.0/16"]
{TRANSPORT}[relay.tls_policy]
"Bank.test" = "verify"
"""
    )
    return path


def test_route_test_tls_policy(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "route", "test", "-c", str(routing), "--no-dns", "--client", "10.1.0.1", "a@bank.test", "b@other.test"
    )
    assert status == 0
    assert '      tls: relay.tls_policy "bank.test" = verify; the domain\'s MTA-STS policy' in block(out, "a@bank.test")
    assert "      tls: relay.tls = may; the domain's MTA-STS policy" in block(out, "b@other.test")


def block(out: str, address: str) -> str:
    return out.split(f"\naddress: {address}\n", 1)[1].split("\naddress: ", 1)[0]


def test_route_test_prints_the_expansion_tree(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "info@virt.test")
    assert status == 0, err
    d = routing.parent
    assert "RCPT checked as from client 192.0.2.1 (the default: an outside client" in out
    assert (
        "  expansion:\n"
        "    info@virt.test\n"
        f"      virtual map {d}/virtual:1: info@virt.test -> team\n"
        "        team@example.test\n"
        f"          aliases {d}/aliases:3: team -> alice, bob+lists, carol@remote.test\n"
        "            alice@example.test\n"
        "            bob+lists@example.test\n"
        "            carol@remote.test\n"
        "  recipients: 3\n"
    ) in out
    assert f"    bob+lists@example.test: local maildir {d}/data/mail/bob (via local.delivery = maildir" in out
    assert "    carol@remote.test: smtp to MX of remote.test, port 25 (via DNS: the MX records of the domain" in out
    assert "      DNS: not looked up (--no-dns)" in out
    assert "  RCPT from 192.0.2.1: 250 2.1.5 Ok" in out  # an alias's remote target needs no relay permission
    assert out.rstrip().endswith("result: deliverable")


def test_route_test_sub_address_and_case(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "Alice+News@Example.TEST")
    assert status == 0
    assert "  normalised: alice@example.test (domain folded to lower case; local part folded to lower case" in out
    assert 'sub-address "+news" removed (local.recipient_delimiter)' in out
    assert "  expansion: none (no aliases or virtual map entry matched)" in out
    assert f"    alice+news@example.test: local maildir {routing.parent}/data/mail/alice" in out


def test_route_test_catch_all_and_postmaster(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "zed@virt.test", "postmaster")
    assert status == 0
    assert f"      virtual map catch-all {routing.parent}/virtual:2: @virt.test -> alice" in out
    assert "  normalised: postmaster@example.test (no domain: example.test (the first of local.domains))" in out
    assert f"          aliases {routing.parent}/aliases:2: root -> alice" in out


def test_route_test_refusals_exit_1(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "route", "test", "-c", str(routing), "--no-dns", "alice@example.test", "nobody@example.test"
    )
    assert status == 1
    block = out.split("address: nobody@example.test\n")[1]
    assert "  refused: 550 5.1.1 User unknown in local recipient table\n" in block
    assert "  RCPT from 192.0.2.1: 550 5.1.1 User unknown in local recipient table\n" in block
    assert "  result: NOT deliverable" in block
    status, out, _ = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "loop1@example.test")
    assert status == 1
    assert "  refused: 550 5.4.6 Alias loop: loop1@example.test -> loop2@example.test -> loop1@example.test" in out
    status, out, _ = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "bad@@x")
    assert status == 1
    assert "  refused: 553 5.1.3 " in out


def test_route_test_relay_check_by_client(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "x@a.sub.test", "bob@lmtp.test")
    assert status == 0  # routable: the relay check is about the client, not the route
    assert (
        '    x@a.sub.test: smtp to host 10.0.0.5 (no MX lookup), port 2525 (via relay.transport ".sub.test" = "smtp:[10.0.0.5]:2525")'
        in out
    )
    assert "  RCPT from 192.0.2.1: 554 5.7.1 Relay access denied" in out
    # an lmtp transport is a final destination: taken without relay permission
    assert (
        '    bob@lmtp.test: lmtp 127.0.0.1:24 as RCPT TO:<bob@lmtp.test> (via relay.transport "lmtp.test" = "lmtp:[127.0.0.1]:24")'
        in out
    )
    assert out.count("RCPT from 192.0.2.1: 250 2.1.5 Ok") == 1
    status, out, _ = run(
        capsys, "route", "test", "-c", str(routing), "--no-dns", "--client", "10.1.2.3", "x@a.sub.test"
    )
    assert status == 0
    assert "RCPT checked as from client 10.1.2.3, in relay.trusted_networks, not authenticated" in out
    assert "  RCPT from 10.1.2.3: 250 2.1.5 Ok" in out


def test_route_test_json(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "route", "test", "-c", str(routing), "--no-dns", "--json", "team@example.test", "nobody@example.test"
    )
    assert status == 1
    team, nobody = json.loads(out)
    assert [r["address"] for r in team["recipients"]] == [
        "alice@example.test",
        "bob+lists@example.test",
        "carol@remote.test",
    ]
    assert team["steps"][1] == {
        "depth": 1,
        "step": "aliases",
        "key": "team",
        "origin": f"{routing.parent}/aliases:3",
        "targets": ["alice", "bob+lists", "carol@remote.test"],
    }
    assert team["deliverable"] is True
    assert nobody["refused"].startswith("550 5.1.1") and nobody["deliverable"] is False


def test_route_test_bad_options_exit_2(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "route", "test", "-c", str(routing), "--client", "not-an-ip", "a@example.test")
    assert status == 2 and "--client" in err
    status, _, err = run(capsys, "route", "test", "-c", str(routing), "--sender", "a@@b", "a@example.test")
    assert status == 2 and "--sender" in err
    (routing.parent / "aliases").write_text("broken line without colon\n")
    status, _, err = run(capsys, "route", "test", "-c", str(routing), "a@example.test")
    assert status == 2 and "aliases:1" in err and "Traceback" not in err


def test_the_traced_router_expands_as_the_server_does(routing: Path) -> None:
    """TracingRouter only records: for every address its expansion is the Router's."""
    cfg = config.load(routing)
    plain, traced = Router(cfg), cli_inspect.TracingRouter(cfg)
    for address in (
        "info@virt.test",
        "zed@virt.test",
        "team@example.test",
        "Alice+x@example.test",
        "nobody@example.test",
        "loop1@example.test",
        "x@a.sub.test",
        "bob@lmtp.test",
        "foreign@remote.test",
    ):
        path = _core.parse_path(f"<{address}>", smtputf8=True, allow_null=False)
        for relay in (False, True):
            assert traced.expand(path, relay_allowed=relay) == plain.expand(path, relay_allowed=relay), address
        assert traced.traced_expand(path)[0] == plain.expand(path, relay_allowed=True)


def test_route_test_address_keys_and_error_transports(routing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "dave+tag@example.test")
    assert status == 0
    assert (
        '    dave+tag@example.test: discard: not wanted (via relay.transport "Dave@example.test" = "discard:not wanted")'
        in out
    )
    status, out, _ = run(capsys, "route", "test", "-c", str(routing), "--no-dns", "x@bounce.test")
    assert status == 1
    assert "  refused: 550 5.1.1 gone away" in out
    assert "  RCPT from 192.0.2.1: 550 5.1.1 gone away" in out  # a final destination: refused as it is, no relay check
