"""Command-line plumbing shared by every `__main__`: config errors as argparse errors that name
the flag, not the dataclass field."""

from __future__ import annotations

import argparse
import re
from typing import Callable, TypeVar

T = TypeVar("T")

# One pass over the message: a qualified field ("AgentConfig.groups", "TrainingSettings.batch_size") or a bare snake_case
# word ("games_per_batch"), so a flag spelled like its field (--max_request_rows) is not
# rewritten twice.
_FIELD_NAME = re.compile(r"\b[A-Z]\w*(?:Config|Settings)\.(\w+)\b|(?<![-.\w])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b")


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the long option that sets it (`games_per_batch` -> `--games-per-batch`)."""
    names = {}
    for action in parser._actions:  # argparse has no public list of its actions
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest != "help":
            names[action.dest] = longs[0]
    return names


def flag_message(parser: argparse.ArgumentParser, message: str) -> str:
    """`message` with config field names that a flag sets written as that flag:
    "AgentConfig.groups must be in [1, games_per_batch=1], got 2" ->
    "--groups must be in [1, --games-per-batch=1], got 2"."""
    flags = flag_names(parser)

    def replace(match: re.Match) -> str:
        field = match.group(1) or match.group(2)
        return flags.get(field, match.group(0))

    return _FIELD_NAME.sub(replace, message)


def config_or_exit(parser: argparse.ArgumentParser, build: Callable[[], T]) -> T:
    """`build()`, or, when it raises ValueError (a config's validation), argparse's usage and
    error message naming the flag, and exit status 2: no traceback for a bad command line."""
    try:
        return build()
    except ValueError as error:
        parser.error(flag_message(parser, str(error)))
        raise AssertionError("unreachable: parser.error exits")
