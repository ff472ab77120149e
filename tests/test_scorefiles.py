"""Tests of tunespec.runtime.scorefiles: reading prediction/reference JSONL and scoring them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunespec.errors import ScoreError
from tunespec.runtime.rouge import score_pairs
from tunespec.runtime.scorefiles import load_predictions, load_references, score_files


def write_jsonl(path: Path, rows: list) -> Path:
    """Write each row as one JSON line (a str row is written as-is)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def preds(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "preds.jsonl",
        [
            {"id": 1, "prediction": "the cat sat on the mat"},
            {"id": "b", "prediction": "a dog ran in the park"},
            {"id": 3, "prediction": ""},
        ],
    )


def score_error(call, *args, **kwargs) -> str:
    """Run ``call``, expect a ScoreError, and return its rendered text."""
    with pytest.raises(ScoreError) as err:
        call(*args, **kwargs)
    return err.value.render()


# --- happy paths -------------------------------------------------------------------------------


def test_references_list(tmp_path, preds):
    refs = write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"id": "3", "references": ["nothing here"]},
            {"id": 1, "references": ["the cat is on the mat", "a cat on a mat"]},
            {"id": "b", "references": ["the dog ran in a park"]},
        ],
    )
    assert load_predictions(preds) == {
        "1": "the cat sat on the mat", "b": "a dog ran in the park", "3": "",
    }
    assert load_references(refs, None)["1"] == ["the cat is on the mat", "a cat on a mat"]
    result = score_files(preds, refs, None, "mean")
    expected = score_pairs(
        ["the cat sat on the mat", "a dog ran in the park", ""],
        [["the cat is on the mat", "a cat on a mat"], ["the dog ran in a park"], ["nothing here"]],
    ).to_dict(include_per_sample=False)
    assert result["aggregate"] == expected["aggregate"]
    assert result["n"] == 3
    assert result["multi_ref"] == "mean"
    assert result["predictions"] == str(preds) and result["references"] == str(refs)
    assert result["reference_fields"] is None
    json.dumps(result)


def test_single_reference(tmp_path, preds):
    refs = write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"id": 1, "reference": "the cat is on the mat"},
            {"id": "b", "reference": "the dog ran"},
            {"id": 3, "reference": "x"},
        ],
    )
    assert load_references(refs) == {
        "1": ["the cat is on the mat"], "b": ["the dog ran"], "3": ["x"],
    }
    result = score_files(preds, refs)
    # sample 1: rouge1 F = 5/6 (hand-checked in test_rouge.py); sample 3 is empty: 0.
    assert result["n"] == 3
    assert 0 < result["aggregate"]["rouge1"]["fmeasure"] < 1


def test_reference_fields(tmp_path, preds):
    refs = write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"id": 1, "summary": "the cat is on the mat", "summary2": "a dog ran", "x": 5},
            {"id": "b", "summary": "the dog ran", "summary2": ["a park", "the park"]},
            {"id": 3, "summary": "x", "summary2": "y"},
        ],
    )
    loaded = load_references(refs, ["summary", "summary2"])
    assert loaded["1"] == ["the cat is on the mat", "a dog ran"]
    assert loaded["b"] == ["the dog ran", "a park", "the park"]
    mean = score_files(preds, refs, ["summary", "summary2"], "mean")
    best = score_files(preds, refs, ["summary", "summary2"], "max")
    assert mean["reference_fields"] == ["summary", "summary2"]
    assert best["multi_ref"] == "max"
    assert best["aggregate"]["rouge1"]["fmeasure"] > mean["aggregate"]["rouge1"]["fmeasure"]
    # one field only
    assert load_references(refs, ["summary"])["1"] == ["the cat is on the mat"]


def test_blank_lines_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "p.jsonl"
    bom = b"\xef\xbb\xbf"
    path.write_bytes(bom + b'{"id": 1, "prediction": "a"}\r\n\r\n{"id": 2, "prediction": "b"}')
    assert load_predictions(path) == {"1": "a", "2": "b"}


# --- errors: each names the file and the line -----------------------------------------------


def test_missing_file(tmp_path):
    text = score_error(load_predictions, tmp_path / "nope.jsonl")
    assert f"{tmp_path / 'nope.jsonl'}: file not found" in text


def test_directory_is_not_a_file(tmp_path):
    assert "not a file" in score_error(load_predictions, tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert f"{path}: file has no rows" in score_error(load_predictions, path)


def test_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": 1, "prediction": "ok"}\n{"id": 2, "prediction": "caf\xe9"}\n')
    text = score_error(load_predictions, path)
    assert f"{path}:2:" in text and "not valid UTF-8" in text and "UTF-8 encoding" in text


@pytest.mark.parametrize(
    "rows, line, needle",
    [
        (['{"id": 1, "prediction": "a"}', '{"id": 2, "prediction": '], 2, "not valid JSON"),
        (['{"id": 1, "prediction": "a"}', '["id", 2]'], 2, "expected a JSON object, got an array"),
        (['"just text"'], 1, "expected a JSON object, got a string"),
        ([{"prediction": "a"}], 1, "missing field 'id'"),
        ([{"id": None, "prediction": "a"}], 1, "'id' is null"),
        ([{"id": True, "prediction": "a"}], 1, "'id' is a boolean"),
        ([{"id": 1, "text": "a"}], 1, "missing field 'prediction'"),
        ([{"id": 1, "prediction": 5}], 1, "'prediction' is a number, not a string"),
        ([{"id": 1, "prediction": None}], 1, "'prediction' is null, not a string"),
        ([{"id": 1, "prediction": "a"}, {"id": "1", "prediction": "b"}], 2, "duplicate id '1'"),
    ],
)
def test_bad_prediction_rows(tmp_path, rows, line, needle):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    text = score_error(load_predictions, path)
    assert f"{path}:{line}" in text
    assert needle in text
    assert " — " in text  # every problem comes with a hint


@pytest.mark.parametrize(
    "rows, fields, line, needle",
    [
        ([{"id": 1, "references": []}], None, 1, "empty reference list"),
        ([{"id": 1, "references": "a"}], None, 1, "'references' is a string"),
        ([{"id": 1, "references": ["a", 2]}], None, 1, "expected a string or an array"),
        ([{"id": 1, "reference": ["a"]}], None, 1, "'reference' is an array, not a string"),
        ([{"id": 1, "reference": "a", "references": ["b"]}], None, 1, "both"),
        ([{"id": 1, "summary": "a"}], None, 1, "missing field 'references'"),
        ([{"id": 1, "summary": "a"}, {"id": 2, "other": "b"}], ["summary"], 2,
         "missing field 'summary' (named by --reference-field)"),
        ([{"id": 1, "summary": []}], ["summary"], 1, "empty reference list"),
        ([{"id": 1, "summary": {"a": 1}}], ["summary"], 1, "'summary' is an object"),
        ([{"id": 1, "reference": "a"}, {"id": 1, "reference": "b"}], None, 2, "duplicate id"),
    ],
)
def test_bad_reference_rows(tmp_path, rows, fields, line, needle):
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    text = score_error(load_references, path, fields)
    assert f"{path}:{line}" in text
    assert needle in text


def test_several_bad_rows_are_all_reported(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": 1, "prediction": "a"}, "{oops", {"id": 3}, {"id": 1, "prediction": "b"}],
    )
    text = score_error(load_predictions, path)
    assert [line.split(":")[1] for line in text.splitlines()] == ["2", "3", "4"]


def test_missing_file_via_score_files(tmp_path, preds):
    text = score_error(score_files, preds, tmp_path / "refs.jsonl")
    assert "refs.jsonl: file not found" in text


def test_unmatched_ids_both_ways(tmp_path):
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": i, "prediction": "x"} for i in range(10)],
    )
    refs = write_jsonl(
        tmp_path / "r.jsonl",
        [{"id": i, "reference": "x"} for i in [0, 1, 2, 20, 21]],
    )
    text = score_error(score_files, preds, refs)
    lines = text.splitlines()
    assert len(lines) == 2
    # prediction ids 3..9 have no reference; the first is on line 4 of the predictions file
    assert lines[0].startswith(f"{preds}:4: 7 prediction id(s) have no reference in {refs}")
    assert "'3', '4', '5', '6', '7' (and 2 more)" in lines[0]
    # reference ids 20, 21 have no prediction; the first is on line 4 of the references file
    assert lines[1].startswith(f"{refs}:4: 2 reference id(s) have no prediction in {preds}")
    assert "'20', '21'" in lines[1]
    assert " — " in lines[0] and " — " in lines[1]


def test_bad_multi_ref_mode(tmp_path, preds):
    refs = write_jsonl(
        tmp_path / "r.jsonl", [{"id": i, "reference": "x"} for i in (1, "b", 3)]
    )
    assert "multi-reference mode" in score_error(score_files, preds, refs, None, "median")


def test_many_bad_rows_are_capped(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": i} for i in range(30)])
    lines = score_error(load_predictions, path).splitlines()
    assert len(lines) == 21
    assert lines[-1] == f"{path}: ... and 10 more problem(s)"
