"""The board's benchmark harness still works: its smallest form, with and without the board."""

from __future__ import annotations

from pathlib import Path

from bench.board import markdown, phase


def test_the_board_benchmark_measures_both_runs(tmp_path: Path) -> None:
    without = phase(tmp_path / "without", 5, 2, 2.0, 2.0, board=False)
    with_board = phase(tmp_path / "with", 5, 2, 2.0, 2.0, board=True)
    assert without["windows"] >= 3
    assert with_board["states_received"] >= 2
    assert with_board["commit_to_page"]["n"] >= 1
    assert with_board["board_rss_mb"]["VmHWM"] > 0
    assert "with the board and 2 pages" in markdown({"without": without, "with": with_board})
