"""Reading data files: rows, row lines, and a precise DataError for every way a file can be wrong."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunespec.compiler.files import expand_glob, read_rows, read_table
from tunespec.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def error_text(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_table(path, **kwargs)
    return info.value.render()


# ---------------------------------------------------------------------------- rows and lines


def test_json_array_rows_and_lines(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"a": "x"},\n\n  {"a": "y",\n   "b": 2},  {"a": "z"}\n]\n')
    table = read_table(path)
    assert table.rows == [{"a": "x"}, {"a": "y", "b": 2}, {"a": "z"}]
    assert table.lines == [2, 4, 5]
    assert table.line_of_row(1) == 4 and table.line_of_row(9) is None
    assert read_rows(path) == table.rows


def test_json_keeps_unicode_and_allows_bom(tmp_path):
    path = write(tmp_path, "d.json", "\ufeff" + json.dumps([{"t": "héllo 世界 🙂"}], ensure_ascii=False))
    assert read_rows(path) == [{"t": "héllo 世界 🙂"}]


def test_jsonl_skips_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n\n   \n{"a": 2}\r\n')
    table = read_table(path)
    assert table.rows == [{"a": 1}, {"a": 2}]
    assert table.lines == [1, 4]


def test_ndjson_suffix_and_fmt_override(tmp_path):
    assert read_rows(write(tmp_path, "d.ndjson", '{"a": 1}\n')) == [{"a": 1}]
    assert read_rows(write(tmp_path, "d.txt", '{"a": 1}\n'), fmt="jsonl") == [{"a": 1}]


def test_csv_values_are_strings_and_multiline_fields_keep_lines(tmp_path):
    path = write(tmp_path, "d.csv", 'question,answer\nwhat,42\n"multi\nline",7\n\n"a, b",""\n')
    table = read_table(path)
    assert table.rows == [
        {"question": "what", "answer": "42"},
        {"question": "multi\nline", "answer": "7"},
        {"question": "a, b", "answer": ""},
    ]
    assert table.lines == [2, 3, 6]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "n": [1, 2]}), path)
    table = read_table(path)
    assert table.rows == [{"text": "a", "n": 1}, {"text": "b", "n": 2}]
    assert table.lines is None
    assert "row 1" in table.problem(1, "bad").render()


def test_table_problem_names_file_line_and_row(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n\n{"a": 2}\n')
    text = read_table(path).problem(1, "empty field 'output'", field="output", hint="fill it").render()
    assert text == f"{path}:3: row 1.output: empty field 'output' — fill it"


def test_large_json_loads_fast(tmp_path):
    rows = [{"instruction": f"do {i}", "input": "", "output": "x" * 200} for i in range(52_000)]
    path = write(tmp_path, "big.json", json.dumps(rows, indent=2))
    start = time.perf_counter()
    table = read_table(path)
    elapsed = time.perf_counter() - start
    assert len(table.rows) == 52_000 and table.lines[-1] == 52_000 * 5 - 3
    assert elapsed < 1.5, f"52,000 rows took {elapsed:.2f} s"


# ---------------------------------------------------------------------------- errors


def test_missing_file_suggests_a_close_name(tmp_path):
    write(tmp_path, "train.jsonl", '{"a": 1}\n')
    text = error_text(tmp_path / "trian.jsonl")
    assert str(tmp_path / "trian.jsonl") in text and "file not found" in text and "train.jsonl" in text


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.json").mkdir()
    assert "is a directory" in error_text(tmp_path / "d.json")


@pytest.mark.parametrize("name", ["e.json", "e.jsonl", "e.csv"])
@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty_file(tmp_path, name, content):
    path = write(tmp_path, name, content)
    text = error_text(path)
    assert str(path) in text and "empty" in text


@pytest.mark.parametrize("name,content", [("e.json", "[]"), ("e.csv", "a,b\n")])
def test_no_rows(tmp_path, name, content):
    assert "no rows" in error_text(write(tmp_path, name, content))


def test_not_utf8_names_line_and_byte(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    text = error_text(path)
    assert text.startswith(f"{path}:2:11: not valid UTF-8: byte 0xe9 at byte offset 22")


def test_invalid_json_has_line_and_column(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"a": 1},\n  {"a": 2,}\n]')
    text = error_text(path)
    assert text.startswith(f"{path}:3:11: invalid JSON")


def test_json_trailing_comma_in_array(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"a": 1},\n]')
    assert error_text(path).startswith(f"{path}:3:1: invalid JSON")


def test_json_unterminated_array(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"a": 1}\n')
    assert error_text(path).startswith(f"{path}:3:1: invalid JSON")


def test_json_extra_data_after_array(tmp_path):
    path = write(tmp_path, "d.json", '[{"a": 1}]\n[{"a": 2}]')
    assert error_text(path).startswith(f"{path}:2:1: invalid JSON: Extra data")


def test_json_object_is_not_an_array_and_hints_the_key(tmp_path):
    path = write(tmp_path, "d.json", '{"data": [{"a": 1}], "version": 2}')
    text = error_text(path)
    assert f"{path}:1:1:" in text and "not an array" in text and "'data'" in text


def test_json_scalar_is_not_an_array(tmp_path):
    text = error_text(write(tmp_path, "d.json", '"hello"'))
    assert "JSON string, not an array" in text


def test_jsonl_content_in_a_json_file(tmp_path):
    path = write(tmp_path, "d.json", '{"a": 1}\n{"a": 2}\n')
    text = error_text(path)
    assert f"{path}:2:1:" in text and ".jsonl" in text


def test_array_element_not_an_object(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"a": 1},\n  "oops"\n]')
    text = error_text(path)
    assert f"{path}:3: row 1: array element is a JSON string, not an object" in text


def test_jsonl_invalid_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n\n{"a": 2\n')
    assert error_text(path).startswith(f"{path}:3:8: invalid JSON")


def test_jsonl_line_not_an_object(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n[1, 2]\n')
    assert f"{path}:2: row 1: line is a JSON array, not an object" in error_text(path)


@pytest.mark.parametrize(
    "name,content,line",
    [("d.json", '[\n{"a": 1},\n{"a": ' + "9" * 5000 + "}]", 3), ("d.jsonl", '{"a": 1}\n' + "[" * 100_000, 2)],
)
def test_json_python_cannot_load(tmp_path, name, content, line):
    path = write(tmp_path, name, content)
    text = error_text(path)
    assert text.startswith(f"{path}:{line}: ") and ("nested too deeply" in text or "4300 digits" in text)


def test_pretty_json_in_a_jsonl_file(tmp_path):
    path = write(tmp_path, "d.jsonl", '[\n  {"a": 1}\n]\n')
    text = error_text(path)
    assert f"{path}:1:" in text and ".json" in text


def test_csv_ragged_row(tmp_path):
    path = write(tmp_path, "d.csv", "question,answer\nq1,a1\nq2,a2,extra\n")
    text = error_text(path)
    assert f"{path}:3: row 1: row has 3 values but the header (line 1) has 2 columns" in text


def test_csv_bad_quoting(tmp_path):
    path = write(tmp_path, "d.csv", 'a,b\n"x"y,z\n')
    assert error_text(path).startswith(f"{path}:2: invalid CSV")


def test_csv_duplicate_or_empty_header(tmp_path):
    assert "duplicate column name 'a'" in error_text(write(tmp_path, "d.csv", "a,a\n1,2\n"))
    assert "has no name" in error_text(write(tmp_path, "e.csv", ",a\n1,2\n"))


def test_unreadable_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = write(tmp_path, "d.parquet", b"this is not parquet")
    text = error_text(path)
    assert str(path) in text and "not a readable Parquet file" in text


def test_unknown_suffix_and_format(tmp_path):
    path = write(tmp_path, "d.txt", "x")
    assert "cannot tell the file type" in error_text(path)
    assert "unknown file format 'yaml'" in error_text(path, fmt="yaml")
    assert "decompress" in error_text(write(tmp_path, "d.jsonl.gz", b"\x1f\x8b"))


# ---------------------------------------------------------------------------- globs


def test_expand_glob(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl", "sub/d.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    assert expand_glob("*.jsonl", tmp_path) == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert expand_glob("**/*.jsonl", tmp_path) == [tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "sub/c.jsonl"]
    assert expand_glob("sub/d.csv", tmp_path) == [tmp_path / "sub/d.csv"]
    assert expand_glob(str(tmp_path / "sub" / "*"), Path("/nonexistent")) == [
        tmp_path / "sub/c.jsonl",
        tmp_path / "sub/d.csv",
    ]


def test_expand_glob_nothing_matches(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    with pytest.raises(DataError) as info:
        expand_glob("*.parquet", tmp_path)
    assert "no file matches the pattern '*.parquet'" in info.value.render() and "train.jsonl" in info.value.render()
    with pytest.raises(DataError) as info:
        expand_glob("trainn.jsonl", tmp_path)
    assert "did you mean" in info.value.render()


# ---------------------------------------------------------------------------- real data


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path} is missing")
    return path


def test_real_files_read_completely():
    assert len(read_rows(shared("dialogsum/dev.jsonl"))) == 500
    assert len(read_rows(shared("alpaca/alpaca_en_demo.json"))) == 999
    table = read_table(shared("sharegpt/glaive_toolcall_en_demo.json"))
    assert len(table.rows) == 300 and table.lines[0] == 2
