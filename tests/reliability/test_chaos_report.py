"""The report itself: lost/duplicated counting and the table's verdict."""

import json

import pytest
from chaos_report import Row, format_table, load, lost_and_duplicated, main


def test_lost_and_duplicated_counts():
    assert lost_and_duplicated(["a", "b", "c"], ["a", "b", "c"]) == (0, 0)
    assert lost_and_duplicated(["a", "b", "c"], ["a", "c"]) == (1, 0)
    assert lost_and_duplicated(["a", "b"], ["a", "a", "b", "z"]) == (0, 2)  # an extra copy and a stranger


def test_table_and_exit_status(tmp_path, capsys):
    good = Row("SIGKILL flow", "extract", 3, 3, 0, 0)
    bad = Row("disk full", "tokenize", 2, 1, 5, 0, "one partial shard visible")
    assert good.ok and not bad.ok
    table = format_table([good, bad])
    assert "| disk full" in table and "5 records lost" in table and "1 rows with failures" in table
    report = tmp_path / "chaos.jsonl"
    report.write_text(json.dumps(good.__dict__) + "\n")
    assert main([str(report)]) == 0
    report.write_text(report.read_text() + json.dumps(bad.__dict__) + "\n")
    assert load(report)[1] == bad
    assert main([str(report)]) == 1
    with pytest.raises(FileNotFoundError, match="make chaos"):
        load(tmp_path / "missing.jsonl")
