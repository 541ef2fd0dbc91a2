"""Settings for the whole suite.

Hypothesis draws the same examples on every run (a property test passes or fails for the code,
not for the day it ran) and writes nothing into the checkout: no example database, and its
caches, by default in ``.hypothesis/`` of the working directory, go to a temporary folder that
is removed when the run ends.
"""

from __future__ import annotations

import shutil
import tempfile

try:
    from hypothesis import configuration, settings
except ImportError:  # the property tests need it; the rest of the suite runs without
    configuration = settings = None

if settings is not None:
    settings.register_profile("cdae", derandomize=True, database=None)
    settings.load_profile("cdae")
    _HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="cdae-hypothesis-")
    configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def pytest_unconfigure(config) -> None:
    if settings is not None:
        shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)
