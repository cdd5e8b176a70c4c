"""The help a newcomer reads (issue 21, "Help"): ``harstream --help`` groups the commands under four
headings, each command once with its one-line summary; every subcommand's ``--help`` says what it does
and shows examples that parse as written; no placeholder leaks an internal name; every option says
what it is for. The whole parser is walked, so a command or option added later is held to the same."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from streamer.cli.main import build_parser, main

GROUPS = ("live", "your own wearable", "data and models", "tools")
# a placeholder that is an internal name: EPISODE_HOLD_S, IDLE_TIMEOUT_S, MAX_WAIT_MS, RATE_HZ ...
INTERNAL = re.compile(r"[A-Z]+_[A-Z_]+_S\b|[A-Z]_(S|MS|HZ)\b")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def shown(action: argparse.Action) -> bool:
    """Whether ``--help`` lists the action (not -h/--help itself, not a hidden option)."""
    return action.help is not argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)


def takes_a_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The command lines in a subcommand's epilog: its lines that start with ``  harstream``."""
    return [line.strip() for line in (parser.epilog or "").splitlines() if line.startswith("  harstream ")]


def top_help(capsys) -> str:
    assert main([]) == 0
    return capsys.readouterr().out


def command_lines(text: str) -> dict[str, list[str]]:
    """The top-level help's command list: heading -> the command names listed under it."""
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line[:-1]
            groups[current] = []
        elif current is not None and line.startswith("  ") and line[2] not in " (":  # not a note
            groups[current].append(line.split()[0])
    return groups


# -- harstream --help --------------------------------------------------------------------------
def test_the_top_help_groups_the_commands_under_four_headings(capsys) -> None:
    text = top_help(capsys)
    listed = command_lines(text)
    assert all(group in listed for group in GROUPS), listed.keys()
    names = [name for group in GROUPS for name in listed[group]]
    commands = subcommands()
    assert sorted(n for n in names if n in commands) == sorted(commands)  # each command exactly once
    assert [n for n in names if n not in commands] == []
    assert "python train.py --config" in text  # training is a script, not a command: said so
    for heading, members in (("live", {"replay", "mqtt", "serial", "fleet"}),
                             ("your own wearable", {"check", "record", "init-config", "calibrate"}),
                             ("data and models", {"evaluate", "export", "download", "history"}),
                             ("tools", {"publish", "bench", "soak"})):  # fmt: skip
        assert members <= set(listed[heading]), (heading, listed[heading])


def test_the_top_help_gives_each_command_its_one_line_summary(capsys) -> None:
    text = top_help(capsys)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    assert set(summaries) == set(subcommands())
    flat = " ".join(text.split())
    for name, summary in summaries.items():
        assert summary and f"{name} {' '.join(summary.split())}" in flat, name
    assert "positional arguments" not in text  # the flat argparse list is gone
    assert "examples:" in text


# -- each command's --help ---------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_command_says_what_it_does_and_shows_examples(command) -> None:
    parser = subcommands()[command]
    assert parser.description and len(parser.description.split()) >= 6, command
    assert "examples:" in (parser.epilog or ""), command
    assert examples(parser), command
    text = parser.format_help()
    assert parser.description.split()[0] in text and "examples:" in text


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_example_parses_as_written(command) -> None:
    found = examples(subcommands()[command])
    assert found, command
    for example in found:
        argv = shlex.split(example)
        assert argv[0] == "harstream" and argv[1] == command, example
        args = build_parser().parse_args(argv[1:])  # a wrong option or value: SystemExit here
        assert args.command == command


def test_the_top_examples_parse_as_written(capsys) -> None:
    lines = [line.strip().split("  ")[0] for line in top_help(capsys).split("examples:")[1].splitlines()]
    runnable = [line for line in lines if line.startswith("harstream ") and "COMMAND" not in line]
    assert len(runnable) >= 4
    for example in runnable:
        build_parser().parse_args(shlex.split(example)[1:])


# -- placeholders and option help -------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(subcommands()))
def test_no_placeholder_is_an_internal_name(command) -> None:
    parser = subcommands()[command]
    for action in parser._actions:
        if not shown(action) or not takes_a_value(action) or action.choices:
            continue
        assert action.metavar, f"{command} {action.option_strings or action.dest}: no metavar"
        assert not INTERNAL.search(str(action.metavar)), f"{command}: {action.metavar}"
        assert "_" not in action.dest or action.metavar != action.dest.upper(), f"{command}: {action.metavar}"
    text = parser.format_help()
    assert not INTERNAL.search(text.replace("HOSTNAME-PID", "")), INTERNAL.search(text)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_says_what_it_is_for(command) -> None:
    parser = subcommands()[command]
    silent = [action.option_strings[-1] if action.option_strings else action.dest
              for action in parser._actions if shown(action) and not (action.help or "").strip()]  # fmt: skip
    assert silent == [], f"{command}: {silent}"


def test_the_leaks_the_issue_names_are_gone(capsys) -> None:
    for command in ("replay", "mqtt", "fleet", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "EPISODE_HOLD_S" not in text and "IDLE_TIMEOUT_S" not in text
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = capsys.readouterr().out
    assert "--episode-hold SECONDS" in text and "--min-confidence FRACTION" in text


def test_one_table_drives_the_parser_and_the_list() -> None:
    """A command's help, description and epilog come from streamer/cli/table.py's table only: a
    module that passes its own, or a command the table lacks, is refused while the parser is built."""
    from streamer.cli.table import COMMANDS, CommandsAction

    assert [c.name for c in COMMANDS] and {c.name for c in COMMANDS} == set(subcommands())
    parser = argparse.ArgumentParser(prog="harstream")
    sub = parser.add_subparsers(action=CommandsAction)
    with pytest.raises(TypeError, match="replay"):
        sub.add_parser("replay", help="a second summary")
    with pytest.raises(KeyError, match="no-such"):
        sub.add_parser("no-such")
    assert sub.add_parser("replay").description == next(c.description for c in COMMANDS if c.name == "replay")
