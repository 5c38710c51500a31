"""Flags derived from a config dataclass's documented fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from services.agent.config import AgentConfig
from services.common.config_flags import add_config_flags, config_values, field_docs
from services.environment.config import EnvironmentConfig
from services.network.config import NetworkConfig
from services.replay.config import ReplayConfig
from services.trainer.config import TrainerConfig


@dataclasses.dataclass(frozen=True)
class Example:
    """An example.

    Attributes:
      name: what it is called,
        over two lines.
      count, limit: how many (100% of them).
      ratio: a float.
      on: a switch.
      seed: a seed or nothing.

    Raises:
      nothing: not an attribute.
    """

    name: str
    count: int = 3
    limit: int = 5
    ratio: float = 0.5
    on: bool = False
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Undocumented:
    """One field documented, one not.

    Attributes:
      a: documented.
    """

    a: int = 1
    b: int = 2


def test_field_docs_read_the_attributes_section():
    docs = field_docs(Example)
    assert docs == {"name": "what it is called, over two lines.", "count": "how many (100% of them).",
                    "limit": "how many (100% of them).", "ratio": "a float.", "on": "a switch.",
                    "seed": "a seed or nothing."}


def test_flags_take_type_default_and_help_from_the_field():
    parser = argparse.ArgumentParser()
    flags = add_config_flags(parser, Example, derived={"limit": "twice the count"})
    assert flags.fields == ("name", "count", "limit", "ratio", "on", "seed")
    args = parser.parse_args(["--name", "x", "--count", "7", "--ratio", "0.25", "--on"])
    assert config_values(parser, args) == {"name": "x", "count": 7, "ratio": 0.25, "on": True, "seed": None}
    args = parser.parse_args(["--name", "x", "--limit", "9", "--no-on", "--seed", "4"])
    assert Example(**config_values(parser, args)) == Example(name="x", limit=9, on=False, seed=4)
    help_text = " ".join(parser.format_help().split())
    assert "what it is called, over two lines." in help_text
    assert "how many (100% of them). (default: 3)" in help_text
    assert "(default: twice the count)" in help_text


def test_a_required_field_is_a_required_flag(capsys):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "the following arguments are required: --name" in capsys.readouterr().err


def test_names_aliases_and_underscores():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example, include=("count", "ratio"), names={"count": "--n"},
                     aliases={"ratio": ("--r",)}, underscores=True)
    assert config_values(parser, parser.parse_args(["--n", "2", "--r", "1.5"])) == {"count": 2, "ratio": 1.5}
    parser = argparse.ArgumentParser()
    add_config_flags(parser, NetworkConfig, include=("max_request_rows",), underscores=True)
    assert parser.parse_args(["--max_request_rows", "9"]).max_request_rows == 9


def test_a_field_without_a_doc_entry_gets_no_silent_flag():
    with pytest.raises(TypeError, match=r"Undocumented\.b has no entry"):
        add_config_flags(argparse.ArgumentParser(), Undocumented)
    with pytest.raises(TypeError, match="has no field 'nope'"):
        add_config_flags(argparse.ArgumentParser(), Example, derived={"nope": "x"})


@pytest.mark.parametrize("cls", [EnvironmentConfig, ReplayConfig, AgentConfig, TrainerConfig, NetworkConfig])
def test_every_service_config_documents_every_field(cls):
    docs = field_docs(cls)
    assert [f.name for f in dataclasses.fields(cls) if f.name not in docs] == []
    assert all(text.strip() for text in docs.values())
