"""Fixtures shared by the /v2 tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["admit_then_run", "run_while_admitting"])
def admission_order(request, monkeypatch):
    """Both orders of a call's admission and its run. A model whose runs cost less than the admission's round trip
    runs while the answer travels (inference.dispatch.runs_cheaply); its result may count only for an admitted
    call, and every failure must settle the metering exactly as when the admission came first."""
    if request.param == "run_while_admitting":
        monkeypatch.setattr("inference.views.runs_cheaply", lambda model: True)
    return request.param
