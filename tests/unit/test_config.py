"""Configuration loading: defaults, types, errors naming the key, the generated reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtprs import config
from smtprs.errors import ConfigError


def test_embedded_default_runs_without_a_file():
    cfg = config.load(None)
    assert cfg.smtpd.listeners[0].address == "127.0.0.1:2525"
    assert cfg.local.domains == ["localhost"]
    assert cfg.smtpd.max_received_headers == 50
    assert Path(cfg.data_dir).is_absolute()


@pytest.mark.parametrize(
    "toml, key",
    [
        ('[smtpd]\nmax_recipients = "ten"\n', "smtpd.max_recipients"),
        ("[smtpd]\nmax_recipients = 0\n", "smtpd.max_recipients"),
        ("[smtpd]\nbogus = 1\n", "smtpd.bogus"),
        ('[[smtpd.listeners]]\naddress = "127.0.0.1:99999"\n', "smtpd.listeners[0].address"),
        ('[[smtpd.listeners]]\naddress = "127.0.0.1:25"\nmode = "pop"\n', "smtpd.listeners[0].mode"),
        ("[local]\ndomains = []\n", "local.domains"),
        ('[local]\nmaildir = "mail/{nobody}"\n', "local.maildir"),
        ("[queue]\nretry_min = 10\nretry_max = 5\n", "queue.retry_max"),
        ("unsafe_no_fsync = 1\n", "unsafe_no_fsync"),
        ("[queue]\nfsync = false\n", "queue.fsync"),
        ("[queue]\ndiscard = true\n", "queue.discard"),
        ('[queue]\nbackend = "memory"\n', "queue.backend"),
        ("smtpd = 3\n", "smtpd"),
        ('[local]\ndelivery = "pigeon"\n', "local.delivery"),
        ('[[smtpd.listeners]]\naddress = "127.0.0.1:995"\nmode = "pop3s"\n', "smtpd.listeners[0].mode"),
        ('[[smtpd.listeners]]\naddress = "127.0.0.1:110"\nmode = "pop3"\n', "smtpd.listeners[0].mode"),
        ('[local]\nlmtp = "nowhere"\n', "local.lmtp"),
        ('[local]\nmbox = "mbox/all"\n', "local.mbox"),
        ('[local]\nvirtual_domains = ["localhost"]\n', "local.virtual_domains[0]"),
        ('[local]\nrecipient_delimiter = "@"\n', "local.recipient_delimiter"),
        (
            '[local]\ndelivery = "lmtp"\nlmtp = "127.0.0.1:2424"\n[[smtpd.listeners]]\naddress = "127.0.0.1:2424"\nmode = "lmtp"\n',
            "local.lmtp",
        ),
    ],
)
def test_errors_name_the_key(tmp_path, toml, key):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert str(e.value).startswith(key + ":"), str(e.value)


@pytest.mark.parametrize(
    "toml,replacement",
    [("[queue]\nfsync = false\n", "unsafe_no_fsync = true"), ("[queue]\ndiscard = true\n", 'queue.backend = "null"')],
)
def test_renamed_keys_say_what_replaces_them(tmp_path, toml, replacement):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match="renamed") as info:
        config.load(path)
    assert replacement in str(info.value)


def test_relative_data_dir_follows_the_config_file(tmp_path):
    f = tmp_path / "etc" / "c.toml"
    f.parent.mkdir()
    f.write_text('data_dir = "var"\n')
    assert config.load(f).data_dir == str(tmp_path / "etc" / "var")


def test_readme_documents_every_key():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    reference = config.reference_markdown()
    assert reference in readme, "README's configuration reference is stale: run `smtprs config-reference`"
    for key in re.findall(r"^\| `([^`]+)`", reference, re.M):
        assert f"`{key}`" in readme


def test_relay_keys_are_checked(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cases = [
        ('[relay]\ntrusted_networks = ["10.0.0.0/33"]\n', "relay.trusted_networks[0]"),
        ('[relay]\nrelayhost = "[smart.test"\n', "relay.relayhost"),
        ('[relay]\nrelayhost = "smart.test:99999"\n', "relay.relayhost"),
        ('[relay.transport]\n"a.test" = "host with space"\n', "relay.transport.a.test"),
        ('[relay.tls_policy]\n"a.test" = "sometimes"\n', "relay.tls_policy.a.test"),
        ('[relay]\nauth_username = "u"\n', "relay.auth_password"),
        (f'[relay]\ntls_ca_file = "{bad}"\n', "relay.tls_ca_file"),
        ('[dns]\nnameservers = ["dns.example"]\n', "dns.nameservers[0]"),
        ("[queue]\ndelay_warning = -1\n", "queue.delay_warning"),
    ]
    for toml, key in cases:
        f = tmp_path / "c.toml"
        f.write_text(toml)
        with pytest.raises(ConfigError) as e:
            config.load(f)
        assert str(e.value).startswith(key + ":"), (toml, str(e.value))


def test_locate_takes_c_then_the_environment_then_etc_then_the_defaults(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib

    load_mod = importlib.import_module("smtprs.config.load")  # (the module: smtprs.config.load is also the function)

    etc = tmp_path / "smtprs.toml"
    monkeypatch.setattr(load_mod, "SYSTEM_CONFIG", str(etc))
    monkeypatch.delenv("SMTPRS_CONFIG", raising=False)
    path, looked = load_mod.locate(None)
    assert path is None and looked[-1] == "the embedded defaults" and f"{etc} (absent)" in looked
    etc.write_text('hostname = "etc.test"\n')
    assert load_mod.locate(None)[0] == str(etc)
    monkeypatch.setenv("SMTPRS_CONFIG", "/elsewhere.toml")
    assert load_mod.locate(None) == ("/elsewhere.toml", ["$SMTPRS_CONFIG=/elsewhere.toml"])
    assert load_mod.locate("/given.toml")[0] == "/given.toml"


def test_a_config_file_over_the_size_limit_is_refused_unread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import importlib

    load_mod = importlib.import_module("smtprs.config.load")
    big = tmp_path / "big.toml"
    with big.open("wb") as fh:
        fh.truncate(load_mod.CONFIG_MAX + 1)  # sparse: nothing is written
    with pytest.raises(ConfigError, match=r"big\.toml: \d+ octets is too large for a configuration file"):
        config.load(big)
    big.write_text('hostname = "ok.test"\n')  # the same path under the limit loads
    assert config.load(big).hostname == "ok.test"
