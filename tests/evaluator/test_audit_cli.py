"""`python -m benchmarks.audit` against real exported tic-tac-toe versions (SavedModels of an
untrained network, searched in process): the versions it picks, its JSON lines and its refusals."""

from __future__ import annotations

import json

import pytest

import games
from benchmarks import audit
from models.export import export_version
from models.networks import MuZeroNetwork


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    game = games.make("tictactoe")
    network = MuZeroNetwork(game.spec, game.settings, seed=0)
    for version in (0, 5, 9):
        export_version(network, base, version)
    return base


def test_the_audit_writes_a_line_per_version_from_the_first_asked(models, tmp_path, capsys):
    out = tmp_path / "audit.jsonl"
    audit.main(["--models", str(models), "--from-version", "5", "--simulations", "2", "--jsonl", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["version"] for r in records] == [5, 9]
    for record in records:
        assert record["simulations"] == 2 and record["positions"]["X"] > 0 and record["positions"]["O"] > 0
        assert record["mistakes_as_x"] + record["mistakes_as_o"] == len(record["mistakes"])
        assert all(len(m["board"]) == 9 and m["played"] not in m["optimal"] for m in record["mistakes"])
    flawed = sum(bool(r["mistakes"]) for r in records)
    assert f"{flawed} of 2 versions (v5-v9) made a mistake" in capsys.readouterr().out


def test_the_audit_refuses_what_it_cannot_audit(models, capsys):
    with pytest.raises(SystemExit) as exit_info:
        audit.main(["--models", str(models), "--from-version", "10"])
    assert exit_info.value.code == 2 and "no version >= 10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        audit.main(["--models", str(models), "--simulations", "0"])
    assert "--simulations must be >= 1, got 0" in capsys.readouterr().err
