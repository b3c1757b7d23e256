#!/usr/bin/env bash
# Install the Debian packages that building smtprs and running its tests need.
#
#   swaks          the SMTP test client of the end-to-end suite
#   dnsmasq-base   the DNS server the relay tests start on a loopback port (the
#                  binary only: dnsmasq-base runs no system service)
#   postfix        for smtp-sink, the downstream SMTP server of the relay tests;
#                  preseeded "No configuration", so no system MTA is set up or
#                  started (smtprs tests never use or disturb one)
#   openssl        makes the test certificates (STARTTLS to the next hop)
#   dovecot-imapd, dovecot-lmtpd, dovecot-pop3d
#                  the mailbox tests' peer: a private Dovecot (own config, own
#                  ports) receives over LMTP and reads our Maildirs over IMAP
#   fetchmail      a POP3 client of the mailbox tests
#   mutt           a mail client of the sendmail(1) tests (tests/e2e/test_sendmail.py):
#                  sends in batch mode through smtprs's sendmail; runs no service
#   opendkim-tools opendkim-testmsg, OpenDKIM's verifier: the DKIM tests check
#                  smtprs's signatures with it (no OpenDKIM service is set up)
#   rspamd         the spam filter the milter tests run in milter mode
#                  (tests/e2e/test_milter_peers.py): each test runs its own rspamd
#                  (own config directory, ports, pid file; no redis); the
#                  package's system service is not started (policy-rc.d below)
#   opendkim       the OpenDKIM milter, which the milter tests run as a signing
#                  milter with their own config and key; its system service is
#                  not started (policy-rc.d below) and never used
#   spamass-milter, spamd (and spamc, spamassassin, which they pull in)
#                  SpamAssassin as a milter (tests/e2e/test_milter_peers.py): the
#                  tests run their own spamd (local tests only, no user config,
#                  own port and pid file) and spamass-milter in the foreground;
#                  the packages' system services are not started (policy-rc.d)
#   unbound        the validating resolver of the DANE tests (tests/e2e/dnssec.py):
#                  each test runs its own unbound (own config, port, pid file,
#                  no chroot); the package's system service is not started
#                  (policy-rc.d below) and never used
#   ldnsutils      ldns-keygen and ldns-signzone, which sign the DANE tests'
#                  DNS zones (DNSSEC, NSEC)
#   iproute2       `ip`, which brings up loopback in the network namespace where
#                  the DKIM tests run opendkim-testmsg against a private dnsmasq
#   libnet-ssleay-perl  swaks's TLS (--tls, --tls-on-connect) for the submission
#                  tests; swaks only recommends it, and we install without
#                  recommends
#   gcc, libc6-dev the linker (cc) that cargo and maturin call
#   g++            libFuzzer's C++ sources (cargo fuzz); cargo-fuzz itself comes
#                  from crates.io (cargo install), for the bounded fuzz run
#   python3-dev    libpython3.X.so, which `cargo test` links (pyo3 without
#                  extension-module), when the interpreter is Debian's own
#   python3-venv   only when the interpreter is Debian's externally managed one
#                  and a virtualenv has to be made (see scripts/find-python.sh)
#
# Usage: scripts/install-deps.sh [all|build]
#
# Idempotent: what is already there is not installed again, and apt is not
# touched at all when nothing is missing.  Runs apt as root, or through sudo
# when that is available.
set -euo pipefail

# "build": only what building and running smtprs needs (make run); default: all.
what="${1:-all}"
PYTHON="${PYTHON:-python3}"
missing=()

if [ "$what" != build ]; then
    command -v swaks >/dev/null 2>&1 || missing+=(swaks)
    command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
    command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    for part in imap lmtp pop3; do
        [ -x "/usr/lib/dovecot/$part" ] || missing+=("dovecot-${part}d")
    done
    command -v fetchmail >/dev/null 2>&1 || missing+=(fetchmail)
    command -v mutt >/dev/null 2>&1 || missing+=(mutt)
    command -v opendkim-testmsg >/dev/null 2>&1 || [ -x /usr/sbin/opendkim-testmsg ] || missing+=(opendkim-tools)
    command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || missing+=(unbound)
    command -v ldns-signzone >/dev/null 2>&1 || missing+=(ldnsutils)
    command -v rspamd >/dev/null 2>&1 || [ -x /usr/bin/rspamd ] || missing+=(rspamd)
    command -v opendkim >/dev/null 2>&1 || [ -x /usr/sbin/opendkim ] || missing+=(opendkim)
    [ -x /usr/sbin/spamass-milter ] || missing+=(spamass-milter)
    [ -x /usr/sbin/spamd ] || missing+=(spamd)
    command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
    perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing+=(libnet-ssleay-perl)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)  # libFuzzer (cargo fuzz) compiles C++
fi
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)

if command -v "$PYTHON" >/dev/null 2>&1; then
    pyinfo=$("$PYTHON" - <<'PY'
import os, sys, sysconfig
libdir = sysconfig.get_config_var("LIBDIR") or ""
ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
ver = sysconfig.get_python_version()
shared = any(os.path.exists(os.path.join(libdir, n)) for n in (f"libpython{ver}.so", ldlib if ldlib.endswith(".so") else ""))
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix
system = sys.base_prefix == "/usr"
print(ver, int(shared), int(managed), int(system))
PY
)
    read -r pyver pyshared pymanaged pysystem <<<"$pyinfo"
    if [ "$pysystem" = 1 ] && [ "$pyshared" = 0 ]; then
        missing+=("libpython${pyver}-dev")
    fi
    if [ "$pymanaged" = 1 ] && ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
        missing+=("python${pyver}-venv")
    fi
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1 && [ "$pysystem" = 1 ]; then
        missing+=(python3-pip)
    fi
else
    missing+=(python3 python3-pip python3-venv python3-dev)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all Debian packages present"
else
    echo "install-deps: installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [[ " ${missing[*]} " == *" postfix "* ]]; then
        # smtp-sink only: no mail system configured, so no MTA starts on port 25
        echo "postfix postfix/main_mailer_type select No configuration" | "${SUDO[@]}" debconf-set-selections
    fi
    # Installing Dovecot (or unbound, rspamd, opendkim, spamd, spamass-milter)
    # would start the system's service (ports 110/143, 53, 11332-11334, 8891, 783);
    # the tests run their own.  policy-rc.d (exit 101) tells the packages'
    # scripts not to start services, for the duration of this install only.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        trap '"${SUDO[@]}" rm -f "$policy"' EXIT
    fi
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "install-deps: cargo not found; install the Rust toolchain with rustup (https://rustup.rs)" >&2
    exit 1
fi

# clippy and rustfmt, for make lint (CI runs it); a minimal rustup profile has neither
if [ "$what" = all ] && command -v rustup >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/rustup" ]; then
    if [ "$what" = all ] && ! { PATH="$HOME/.cargo/bin:$PATH" cargo clippy --version && PATH="$HOME/.cargo/bin:$PATH" cargo fmt --version; } >/dev/null 2>&1; then
        echo "install-deps: rustup component add clippy rustfmt"
        PATH="$HOME/.cargo/bin:$PATH" rustup component add clippy rustfmt
    fi
fi

# cargo fuzz, for the bounded libFuzzer run in the suite (tests/fuzz/test_cargo_fuzz.py)
if [ "$what" = all ] && ! PATH="$HOME/.cargo/bin:$PATH" cargo fuzz --version >/dev/null 2>&1; then
    echo "install-deps: cargo install cargo-fuzz --locked (about 2 minutes)"
    PATH="$HOME/.cargo/bin:$PATH" cargo install cargo-fuzz --locked
fi
