"""Every numeric option of every command has a range, checked while the command line is parsed
(streamer/options.py): NaN, infinities and absurd values are refused in one line, exit 2."""

from __future__ import annotations

import argparse

import pytest

from streamer.cli.main import build_parser, main

NOT_YET: set[str] = set()  # commands whose options are not walked here (none now)
ABSURD = ("nan", "inf", "-inf", "1e300", "-1e300", "99999999999999999999", "-99999999999999999999")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name not in NOT_YET}


def numeric_options() -> list[tuple[str, str]]:
    """(command, option) for every option whose value is a number."""
    found = []
    for name, parser in subcommands().items():
        for action in parser._actions:
            if action.option_strings and (action.type in (int, float) or hasattr(action.type, "range")):
                found.append((name, action.option_strings[-1]))
    return found


def refused(capsys, argv: list[str]) -> str:
    """The one line with which parsing ``argv`` is refused (exit 2); parsed only, never run."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert err.count("\n") == 1, err
    return err


def test_every_numeric_option_is_checked_by_a_range_not_a_bare_int_or_float() -> None:
    bare = [f"{name} {action.option_strings[-1]}" for name, parser in subcommands().items()
            for action in parser._actions if action.type in (int, float)]  # fmt: skip
    assert bare == []
    assert len(numeric_options()) > 30  # the walk found the options it is about


@pytest.mark.parametrize(("command", "option"), numeric_options())
def test_absurd_values_of_every_numeric_option_are_refused_in_one_line(capsys, command, option) -> None:
    for value in ABSURD:
        err = refused(capsys, [command, f"{option}={value}"])  # "=": "-inf" is a value, not an option
        assert f"harstream {command}: error: argument {option}" in err and value in err


@pytest.mark.parametrize("argv", [
    ["replay", "--speed", "-1"], ["replay", "--hop", "0"], ["replay", "--hop", "1000000000000"],
    ["replay", "--min-confidence", "1.5"], ["replay", "--min-confidence", "-1"],
    ["replay", "--episode-hold", "-1"], ["replay", "--episode-confidence", "5"],
    ["replay", "--retain", "0"], ["replay", "--store", ""], ["replay", "--threads", "1000000"],
    ["mqtt", "--max-devices", "1000000000000000000"], ["mqtt", "--idle-timeout", "1e-300"],
    ["mqtt", "--max-wait-ms", "inf"], ["fleet", "--mqtt-port", "0"], ["check", "--connect-timeout", "nan"],
    ["publish", "--speed", "1e-300"], ["calibrate", "--seconds", "inf"], ["mqtt", "--qos", "3"],
    ["replay", "--retain", "30 days"],
])  # fmt: skip
def test_the_values_the_issue_names_are_refused_in_one_line(capsys, argv) -> None:
    err = refused(capsys, argv)
    assert f"argument {argv[1]}" in err and "--help" in err


def test_argparse_own_errors_are_one_line_too(capsys) -> None:
    err = refused(capsys, ["replay", "--no-such-option"])
    assert "unrecognized arguments" in err


def test_sensible_values_still_parse() -> None:
    args = build_parser().parse_args(["replay", "--speed", "0", "--hop", "16", "--min-confidence", "0.5",
                                      "--retain", "30d", "--store", "h.db",
                                      "--episode-hold", "0", "--threads", "0"])  # fmt: skip
    assert (args.speed, args.hop, args.min_confidence, args.threads) == (0.0, 16, 0.5, 0)
    mqtt = build_parser().parse_args(["mqtt", "--broker", "mqtt://h", "--idle-timeout", "0"])
    assert mqtt.idle_timeout_s == 0  # 0: never forget a device
    assert build_parser().parse_args(["replay"]).hop == 0  # not given: a quarter window (LiveOptions)


def test_retain_without_a_store_is_refused_in_one_line(capsys) -> None:
    assert main(["replay", "--retain", "30d", "--headless", "--checkpoint", "no-such-model.pt"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--retain" in err and "--store" in err
