"""References from any column of the source rows (evaluation.reference_fields).

The sample tests/references/dialogsum_multiref.jsonl (written for this test, in DialogSum test-split
shape: summary1, summary2, summary3; test_3 has an empty summary3) is compiled with the tiny tokenizer;
evaluation is run with fixed predictions in place of generation, and its ROUGE is compared with
rouge_score's own ``score_multi`` (max over references per sample) computed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compile_fixtures import compile_spec, load_split, write_spec
from rouge_score import rouge_scorer

from tunespec.errors import DataError

SAMPLE = Path(__file__).parent / "references" / "dialogsum_multiref.jsonl"
FIELDS = ["summary1", "summary2", "summary3"]


def _rows() -> list[dict]:
    return [json.loads(x) for x in SAMPLE.read_text(encoding="utf-8").splitlines()]


def _spec(tmp_path: Path, fields=FIELDS, **evaluation) -> Path:
    data = {"format": "summarization", "column_map": {"summary": "summary1"}, "sources": [{"path": str(SAMPLE)}]}
    return write_spec(tmp_path, data=data, evaluation={"split": "train", "reference_fields": fields, "multi_ref": "max",
                                                       "metrics": ["rouge"], **evaluation})


def test_every_named_column_is_kept_untrained_and_short_rows_are_counted(tmp_path):
    result = compile_spec(_spec(tmp_path), tmp_path / "build")
    _, rows, toks = load_split(result.path, "train")
    source = {r["fname"]: r for r in _rows()}
    for row in rows:
        want = [source[row["id"]][f] for f in FIELDS if source[row["id"]][f]]
        assert row["references"] == want, row["id"]
        text = row["prompt"] + row["completion"]  # what is tokenized: summary1 trained, summary2/3 nowhere
        assert row["completion"].startswith(source[row["id"]]["summary1"]), row["id"]
        assert not any(source[row["id"]][f] and source[row["id"]][f] in text for f in FIELDS[1:]), row["id"]
    assert sum(len(r["references"]) for r in rows) == 17
    assert result.manifest["references"] == {"fields": FIELDS, "rows_with_fewer": {"train": 1}}
    (warning,) = [m for m in result.messages if "reference_fields" in m]
    assert "1 of 6 train rows have fewer references than the 3 fields named" in warning
    assert "t.yaml:" in warning  # the spec file's position of evaluation.reference_fields


def test_misspelled_reference_field_is_a_spec_error_with_its_position(tmp_path):
    spec = _spec(tmp_path, fields=["summary1", "sumary2"])
    with pytest.raises(DataError) as info:
        compile_spec(spec, tmp_path / "build")
    text = info.value.render()
    assert "evaluation.reference_fields.1: reference field 'sumary2' is in no row" in text
    assert "did you mean 'summary2'?" in text and f"{spec.name}:" in text
    assert not (tmp_path / "build").exists()


def test_evaluation_scores_against_all_three_references(tmp_path, monkeypatch):
    from tunespec.build_reader import Build
    from tunespec.runtime import evaluate as ev

    result = compile_spec(_spec(tmp_path), tmp_path / "build")
    rows = _rows()
    # each prediction is closest to the row's summary3 (or summary2 where summary3 is empty), a few words cut
    preds = {r["fname"]: " ".join((r["summary3"] or r["summary2"]).split()[1:-1]) for r in rows}
    build = Build(result.path)
    order = [r["id"] for r in build.rows("train")]
    monkeypatch.setattr(ev, "load_variant", lambda build, which, base=None: (None, "tuned"))
    monkeypatch.setattr(ev, "generate", lambda m, tok, build, prompts, log=print, **kw:
                        ev.Generated([preds[i] for i in order], 0.1, 1))
    summary = ev.evaluate(build, model="merged", log=lambda s: None)

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    by_id = {r["fname"]: r for r in rows}
    for metric in ("rouge1", "rouge2", "rougeL"):
        multi = [scorer.score_multi([by_id[i][f] for f in FIELDS if by_id[i][f]], preds[i])[metric].fmeasure
                 for i in order]
        first_only = [scorer.score(by_id[i]["summary1"], preds[i])[metric].fmeasure for i in order]
        want = sum(multi) / len(multi)
        assert summary["tuned"][metric]["f1"] == pytest.approx(want, abs=1e-6), metric
        assert abs(want - sum(first_only) / len(first_only)) > 0.2  # reading summary1 alone would not pass
