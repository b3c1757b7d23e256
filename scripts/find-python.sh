#!/usr/bin/env bash
# Print the Python interpreter to build and test smtprs with.
#
# The active one ($VIRTUAL_ENV, or python3 on PATH) unless it is Debian's
# externally managed system Python (PEP 668: pip refuses to install into it);
# then build/venv/bin/python, a virtualenv the Makefile creates on first use.
# $PYTHON, when set, wins.
set -euo pipefail
if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
    exit 0
fi
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    echo "$VIRTUAL_ENV/bin/python"
    exit 0
fi
py=$(command -v python3 || command -v python || true)
if [ -z "$py" ]; then
    echo python3
    exit 0
fi
if "$py" -c 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix else 1)'; then
    echo "$(cd "$(dirname "$0")/.." && pwd)/build/venv/bin/python"
else
    "$py" -c 'import sys; print(sys.executable)'
fi
