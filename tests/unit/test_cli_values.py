"""Values out of range on the command line are refused by the parser itself: exit code 2, the
command's usage and a message naming the flag and the value on stderr, and nothing sent to a
coordinator (none runs here)."""

from __future__ import annotations

import pytest

from cli.main import build_parser, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["checkpoint", "ring", "--timeout", "-1"], "argument --timeout: -1 is out of range"),
        (["checkpoint", "ring", "--timeout", "0"], "argument --timeout: 0 is out of range"),
        (["checkpoint", "ring", "--timeout", "nan"], "argument --timeout: nan is out of range"),
        (["checkpoint", "ring", "--timeout", "soon"], "expected a number of seconds, not 'soon'"),
        (["restart", "ring", "--timeout", "-2.5"], "argument --timeout: -2.5 is out of range"),
        (["restart", "ring", "--timeout", "1e9"], "at most 86400 seconds"),
        (["restart", "ring", "--map", "h1"], "argument --map: malformed host map entry 'h1'"),
        (["restart", "ring", "--map", "h1=h4,h1=h5"], "host map entry names h1 twice"),
        (["restart", "ring", "--plugin-option", "x"], "argument --plugin-option: expected NAME="),
        (
            ["launch", "--job", "j", "--host", "h1", "--rank", "-5", "--", "sleep"],
            "argument --rank: -5 is out of range: give 0 to 1000000",
        ),
        (
            ["launch", "--job", "j", "--host", "h1", "--rank", "1000001", "--", "sleep"],
            "argument --rank: 1000001 is out of range",
        ),
        (
            ["launch", "--job", "j", "--host", "h1", "--env", "=1", "--", "sleep"],
            "argument --env: expected NAME=VALUE, not '=1'",
        ),
        (["testbed", "up", "--hosts", "-3"], "argument --hosts: -3 is out of range: give 1 to 200"),
        (["testbed", "up", "--hosts", "0"], "argument --hosts: 0 is out of range"),
        (["demo", "--hosts", "3"], "argument --hosts: 3 is out of range: give 6 to 200"),
        (["schedule", "ring", "--every", "often"], "argument --every: expected a duration"),
        (["schedule", "ring", "--every", "0"], "argument --every: 0 is out of range"),
        (["schedule", "ring", "--every", "2m", "--keep", "0"], "argument --keep: 0 is out of"),
        (["schedule", "ring", "--every", "2m", "--off"], "not allowed with argument --every"),
        (["schedule", "ring"], "one of the arguments --every --off is required"),
        (["checkpoints", "ring", "--pin", "a", "--unpin", "b"], "not allowed with argument"),
    ],
)
def test_a_value_out_of_range_exits_2_with_the_usage_and_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: crctl ")
    assert message in err


def test_values_in_range_are_parsed_into_what_is_sent() -> None:
    parser = build_parser()
    args = parser.parse_args(["checkpoint", "ring", "--timeout", "0.5"])
    assert args.timeout == 0.5
    assert parser.parse_args(["checkpoint", "ring"]).timeout == 0  # the coordinator's default
    args = parser.parse_args(
        ["restart", "ring", "--map", "h1=h4,h2=h5", "--plugin-option", "files=/a,/b"]
    )
    assert args.map == {"h1": "h4", "h2": "h5"}
    assert dict(args.plugin_option) == {"files": "/a,/b"}
    assert parser.parse_args(["restart", "ring"]).map == {}
    args = parser.parse_args(["launch", "--job", "j", "--host", "h1", "--rank", "0", "--", "x"])
    assert args.rank == 0
    assert parser.parse_args(["launch", "--job", "j", "--host", "h1", "--", "x"]).rank == -1
