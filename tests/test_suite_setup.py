"""The suite's own machinery: the `xdist_group` marks that share a costly module fixture (or a
worker's compiled programs) among tests really reach pytest-xdist's scheduler.

pytest 9.2 builds node ids from a structured id, so pytest-xdist 3.8's `--dist loadgroup`, which
appends `@group` to `item._nodeid`, silently stopped grouping (pytest-dev/pytest-xdist#1386):
every grouped fixture was built once per worker (seen here: the simulated cohort of test_simulate.py on both).
pyproject.toml keeps pytest below 9.2 until xdist adapts; this test fails if grouping is lost again.
"""

from __future__ import annotations

import os

import pytest


@pytest.mark.xdist_group("suite_setup")
def test_xdist_groups_reach_the_scheduler(request):
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        pytest.skip("only a pytest-xdist worker (-n 2 --dist loadgroup, the README's command) sees its groups")
    if not request.config.getvalue("loadgroup"):
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@suite_setup"), request.node.nodeid
