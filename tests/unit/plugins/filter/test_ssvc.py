"""The SSVC filters: same answers as module_utils, errors as AnsibleFilterError."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.exchangeops.patching.plugins.filter.ssvc import FilterModule

F = FilterModule().filters()


def test_filters_are_registered():
    assert set(F) == {"ssvc_deployer", "ssvc_coordinator", "bod_due_date"}


def test_deployer_and_coordinator():
    assert F["ssvc_deployer"]("active", "open", "yes", "very_high") == "immediate"
    assert F["ssvc_deployer"]("PoC", "small", "no", "low") == "defer"
    assert F["ssvc_coordinator"]("active", "yes", "total", "high") == "act"
    assert F["ssvc_coordinator"]("none", "no", "partial", "low") == "track"


def test_bod_due_date_counts_from_the_start_date():
    assert F["bod_due_date"]("2026-11-20", True, True, "yes", "total") == "2026-11-23"
    assert F["bod_due_date"]("2026-11-20T08:00:00Z", False, False, "yes", "total") == "2027-01-19"
    assert F["bod_due_date"]("2026-11-20", False, False, "no", "partial") is None


@pytest.mark.parametrize(("name", "args", "message"), [
    ("ssvc_deployer", ("maybe", "open", "yes", "high"), "ssvc_deployer: .*maybe"),
    ("ssvc_coordinator", ("active", "yes", "huge", "high"), "ssvc_coordinator: .*huge"),
    ("bod_due_date", ("someday", True, True, "yes", "total"), "start 'someday' is not an ISO date"),
    ("bod_due_date", ("2026-11-20", True, True, "perhaps", "total"), "bod_due_date: .*perhaps"),
])
def test_bad_values_raise_filter_errors(name, args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        F[name](*args)
