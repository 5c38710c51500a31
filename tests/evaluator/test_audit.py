"""The exact tic-tac-toe audit (services/evaluator/audit.py): the minimax player has no mistake
on any line, a player with one planted blunder is caught at exactly that position (and only on
lines that reach it), and one that blunders as X is caught as X."""

from __future__ import annotations

import numpy as np

from services.agent.opponents import tictactoe_minimax
from services.evaluator.audit import audit_tictactoe

# X took a corner, O the centre, X the opposite corner: O must take an edge; a corner loses.
TRAP = np.array([[0, 0, 2], [0, 1, 0], [2, 0, 0]])  # O to move: 1 O (the mover), 2 X


def perfect(observation, legal):
    # Ties broken the same way every call: the audit needs a deterministic player.
    return tictactoe_minimax(observation, legal, np.random.default_rng(0))


def planted(*moves: tuple[np.ndarray, int]):
    """The perfect player, except that in each position `board` (mover's view) it plays `cell`."""
    def player(observation, legal):
        actions = perfect(observation, legal)
        boards = (observation[..., 0] + 2 * observation[..., 1]).astype(np.int64)
        for board, cell in moves:
            actions[(boards == board).all(axis=(1, 2))] = cell
        return actions
    return player


def test_the_perfect_player_makes_no_mistake_on_any_line():
    audit = audit_tictactoe(perfect)
    assert audit.mistakes == []
    # Every optimal X line is walked: dozens of distinct positions per side.
    assert audit.positions["X"] > 10 and audit.positions["O"] > 50


def test_a_planted_blunder_is_found_at_its_position_only():
    audit = audit_tictactoe(planted((TRAP, 8)))  # the corner
    assert len(audit.mistakes) == 1
    mistake = audit.mistakes[0]
    assert mistake.side == "O" and mistake.played == 8
    np.testing.assert_array_equal(mistake.board, TRAP)
    assert mistake.optimal == (1, 3, 5, 7)  # the edges


def test_a_blunder_as_x_is_found_as_x():
    # X opens in a corner and answers O's centre with the opposite corner; when O then takes an
    # edge (threatening its column), X must block at 7 and plays 3 instead.
    opening = (np.zeros((3, 3), np.int64), 0)
    opposite = (np.array([[1, 0, 0], [0, 2, 0], [0, 0, 0]]), 8)
    blunder = np.array([[1, 2, 0], [0, 2, 0], [0, 0, 1]])
    audit = audit_tictactoe(planted(opening, opposite, (blunder, 3)))
    assert [(m.side, m.played, m.optimal) for m in audit.mistakes] == [("X", 3, (7,))]
    np.testing.assert_array_equal(audit.mistakes[0].board, blunder)
    # Without the blunder the same forced path has none.
    assert audit_tictactoe(planted(opening, opposite)).mistakes == []


def test_an_audit_record_lists_every_mistake_by_side():
    from benchmarks.audit import audit_record
    record = audit_record(7, 32, audit_tictactoe(planted((TRAP, 8))))
    assert record["version"] == 7 and record["simulations"] == 32
    assert (record["mistakes_as_x"], record["mistakes_as_o"]) == (0, 1)
    assert record["mistakes"] == [{"side": "O", "board": TRAP.reshape(-1).tolist(), "played": 8,
                                   "optimal": [1, 3, 5, 7]}]
