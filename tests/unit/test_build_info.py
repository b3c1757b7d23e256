"""build_info (``smtprs --version`` and the smtprs_build_info gauge)."""

from __future__ import annotations

import ssl

import smtprs
from smtprs import metrics
from smtprs.cli import version_text


def test_build_info_names_what_runs() -> None:
    info = metrics.build_info()
    assert info["version"] == smtprs.__version__ and info["core"] == smtprs._core.__version__
    assert info["openssl"] == ssl.OPENSSL_VERSION
    assert set(info) == {"version", "core", "python", "openssl", "trio", "dnspython"}
    assert version_text().splitlines()[0] == f"smtprs {smtprs.__version__}"


def test_the_gauge_is_one_however_many_workers_answer() -> None:
    merged = metrics.merge([metrics.Metrics().snapshot() for _ in range(3)])
    (sample,) = [g for g in merged["gauges"] if g[0] == "smtprs_build_info"]
    assert sample[2] == 1.0
    assert dict(map(tuple, sample[1]))["version"] == smtprs.__version__
    text = metrics.render(merged)
    assert "# TYPE smtprs_build_info gauge" in text
    assert f'smtprs_build_info{{core="{smtprs._core.__version__}",' in text
