"""The one error a user can fix (a bad option, a missing file, an unreachable broker), raised by the
commands and the live assembly alike and printed by streamer/cli/main.py as one line, exit code 1.
A leaf, so that the live assembly (streamer/live.py) needs nothing of the command line to raise it."""


class CliError(Exception):
    """A failure the user can fix; printed as one line, exit code 1."""
