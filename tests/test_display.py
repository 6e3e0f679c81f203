"""display: rows of results as a deterministic plain-text table."""

from __future__ import annotations

from course_lib.display import format_table, show_table


def test_format_table_handles_missing_values():
    table = format_table([{"a": 1, "b": 0.5}, {"a": 2}])
    assert table.splitlines() == ["a  b", "-  ------", "1  0.5000", "2  -"]


def test_columns_are_chosen_and_ordered_and_digests_shortened():
    rows = [{"file": "x.pth", "sha256": "0123456789abcdef" * 4, "size": 10}]
    table = format_table(rows, ["sha256", "file"])
    assert table.splitlines() == [
        "sha256        file",
        "------------  -----",
        "0123456789ab  x.pth",
    ]


def test_no_rows():
    assert format_table([]) == "(no rows)"


def test_show_table_prints_the_table(capsys):
    show_table([{"a": 1}])
    assert capsys.readouterr().out == format_table([{"a": 1}]) + "\n"
