"""Fuzz and property tests: how long they run.

The hypothesis tests here take their settings from a profile chosen with the
environment variable ``SMTPRS_FUZZ_PROFILE`` (hypothesis's own
``--hypothesis-profile`` would change every hypothesis test of the suite):

    ci      (default) a few hundred dialogues, ~30-60 s in all: the normal
            suite (derandomized when CI is set)
    long    20x more, for a developer's machine (about 8 minutes)
    soak    100,000 dialogues, no time bound: an overnight run

``SMTPRS_FUZZ_EXAMPLES=N`` overrides the number of examples of any profile.
A failing example is printed by hypothesis; with ``--hypothesis-seed=N`` (or
the example database in .hypothesis/) it replays.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    "print_blob": True,
}
# In CI (CI=true) the examples are derandomized: the same dialogues on every
# run, so a submission is not failed by a find unrelated to it; the random
# exploration happens on developers' machines and with the longer profiles.
settings.register_profile("smtprs-fuzz-ci", max_examples=500, derandomize=bool(os.environ.get("CI")), **_COMMON)
settings.register_profile("smtprs-fuzz-long", max_examples=20_000, **_COMMON)
settings.register_profile("smtprs-fuzz-soak", max_examples=100_000, **_COMMON)


def fuzz_settings(scale: float = 1.0) -> settings:
    """The settings of the chosen profile; ``scale`` sizes one test's share."""
    name = os.environ.get("SMTPRS_FUZZ_PROFILE", "ci")
    base = settings.get_profile(f"smtprs-fuzz-{name}")
    examples = int(os.environ.get("SMTPRS_FUZZ_EXAMPLES", "0")) or max(1, int(base.max_examples * scale))
    return settings(base, max_examples=examples)
