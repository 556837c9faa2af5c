"""The CLI's structured arguments: host maps, NAME=VALUE options whose values may hold
commas (a list of files for the host-files plugin) or "=", and schedule intervals."""

from argparse import ArgumentTypeError

import pytest

from cli.arguments import between, duration, format_duration, host_map, key_value, seconds


def test_a_host_map_lists_moves() -> None:
    assert host_map("h1=h4, h2=h5,") == {"h1": "h4", "h2": "h5"}
    assert host_map("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [("h1", "malformed host map entry 'h1'"), ("h1=", "malformed"), ("h1=h4,h1=h5", "twice")],
)
def test_a_malformed_host_map_is_refused(text: str, message: str) -> None:
    with pytest.raises(ArgumentTypeError, match=message):
        host_map(text)


def test_option_values_keep_their_commas_and_equal_signs() -> None:
    assert key_value("rewrite_files=/etc/a,/etc/b") == ("rewrite_files", "/etc/a,/etc/b")
    assert key_value("expr=x=1") == ("expr", "x=1")
    assert key_value("EMPTY=") == ("EMPTY", "")


@pytest.mark.parametrize("item", ["noequals", "=value"])
def test_an_option_without_a_name_is_refused(item: str) -> None:
    with pytest.raises(ArgumentTypeError, match=f"expected NAME=VALUE, not '{item}'"):
        key_value(item)


def test_deadlines_are_seconds_above_zero_up_to_a_day() -> None:
    assert seconds("0.001") == 0.001
    assert seconds("86400") == 86400.0
    for text in ("0", "-1", "nan", "inf", "86401"):
        with pytest.raises(ArgumentTypeError, match=f"{text} is out of range"):
            seconds(text)


def test_whole_numbers_are_taken_within_their_range() -> None:
    assert between(0, 9)("0") == 0
    assert between(0, 9)("9") == 9
    with pytest.raises(ArgumentTypeError, match="10 is out of range: give 0 to 9"):
        between(0, 9)("10")
    with pytest.raises(ArgumentTypeError, match=r"expected a whole number, not '1\.5'"):
        between(0, 9)("1.5")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("90s", 90.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("2s", 2.0),
        ("1d2h3m4s", 93784.0),
        ("1.5s", 1.5),
        ("90", 90.0),
        ("2.5", 2.5),
        (" 2M ", 120.0),
    ],
)
def test_an_interval_is_read_with_units_or_as_seconds(text: str, value: float) -> None:
    assert duration(text) == value


@pytest.mark.parametrize("text", ["", "soon", "1h30", "m", "2x", "1.5m", "30m1h", "1 h", "--2"])
def test_an_interval_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(
        ArgumentTypeError, match=f"expected a duration such as 90s, 2m, 1h30m .*{text!r}"
    ):
        duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0.5", "-5", "nan", "inf", "367d"])
def test_an_interval_below_a_second_or_above_a_year_is_refused(text: str) -> None:
    with pytest.raises(ArgumentTypeError, match=f"{text} is out of range: give 1 second to 366"):
        duration(text)


@pytest.mark.parametrize("seconds_", [1.0, 2.0, 90.0, 5400.0, 93784.0, 1.5, 86400.0])
def test_an_interval_is_written_as_it_is_read(seconds_: float) -> None:
    assert duration(format_duration(seconds_)) == seconds_
    assert format_duration(5400.0) == "1h30m"
