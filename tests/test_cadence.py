"""The Cadence type: one meaning per value, the written forms, and the errors."""

from __future__ import annotations

import pytest

from rlscope.cadence import Cadence


def test_every_is_a_period_and_zero_means_no_periodic_runs():
    c = Cadence(every=3)
    assert [s for s in range(0, 10) if c.due(s)] == [3, 6, 9]  # step 0 (before training) is never periodic
    assert not any(Cadence(every=0, at_end=True).due(s) for s in range(20))
    assert Cadence(every=1).due(1) and Cadence(every=1).due(2)


def test_start_and_end_are_independent_of_the_period():
    c = Cadence(every=0, at_start=True, at_end=True)
    assert not c.off and c.at_start and c.at_end and not c.due(5)
    assert Cadence().off and not Cadence(at_end=True).off


@pytest.mark.parametrize("bad", [-1, 1.5, True, "x"])
def test_bad_periods_are_errors(bad):
    with pytest.raises(ValueError, match="'every' must be a whole number of steps >= 0"):
        Cadence(every=bad)


def test_written_forms():
    declared = Cadence(every=50, at_start=True, at_end=True)
    parse = Cadence.parse
    assert parse(10, declared) == Cadence(10, True, True)  # an int sets the period, keeps start/end
    assert parse(0, declared) == Cadence(0, True, True)  # 0: no periodic runs, still base and end
    assert parse("10", declared) == Cadence(10, True, True)
    assert parse("off", declared).off and parse(False, declared).off
    assert parse(True, declared) == declared and parse(None, declared) == declared
    assert parse("end", declared) == Cadence(0, False, True)  # explicit parts: exactly those
    assert parse("25+end", declared) == Cadence(25, False, True)
    assert parse("start, end", declared) == Cadence(0, True, True)
    assert parse("every 5", declared) == Cadence(5)
    assert parse({"every": 5}, declared) == Cadence(5, True, True)  # a mapping: over the declared default
    assert parse({"at_start": False}, declared) == Cadence(50, False, True)
    assert parse(Cadence(7), declared) == Cadence(7)


def test_written_form_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown part 'weekly'"):
        Cadence.parse("weekly")
    with pytest.raises(ValueError, match=r"unknown cadence field 'evry'\. Did you mean 'every'\?"):
        Cadence.parse({"evry": 3})
    with pytest.raises(ValueError, match="cannot read"):
        Cadence.parse(2.5)


def test_str_round_trips():
    for c in (Cadence(50, True, True), Cadence(0, False, True), Cadence(1), Cadence()):
        assert Cadence.parse(str(c)) == c
    assert str(Cadence()) == "off" and str(Cadence(50, True, True)) == "every 50+start+end"
