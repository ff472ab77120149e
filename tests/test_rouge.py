"""Tests of tunespec.runtime.rouge: pinned values, agreement with rouge_score, aggregation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from tunespec.errors import ScoreError
from tunespec.runtime.rouge import (
    METRICS,
    RougeResult,
    delta,
    markdown_table,
    score_one,
    score_pairs,
    split_sentences,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DIALOGSUM_DEV = SHARED_DATA / "dialogsum" / "dev.jsonl"

# Real-looking summaries: (prediction, reference), and the same texts with one sentence per
# line, written out by hand (what rougeLsum should see).
SUMMARIES = [
    (
        "The doctor tells Person2 he may have asthma and sends him to a specialist.",
        "#Person2# has trouble breathing. The doctor asks #Person2# about it and will send "
        "#Person2# to a pulmonary specialist.",
    ),
    (
        "Jimmy and his friend agree to work out at 3:30 on arms and stomach.",
        "#Person1# invites Jimmy to go workout and persuades him into working out on arms and "
        "stomach.",
    ),
    (
        "The shares fell 3.5 percent on Tuesday. Analysts blamed weak demand!",
        "Shares dropped 3.5% on Tuesday after the company reported weak demand. Analysts were "
        "surprised.",
    ),
    (
        "Where is the station? Person1 asks. Person2 gives directions.",
        "#Person2# tells #Person1# the way to the train station.",
    ),
    (
        "",
        "Mary buys a new dress for the party.",
    ),
]
SUMMARIES_ONE_SENTENCE_PER_LINE = [
    (
        "The doctor tells Person2 he may have asthma and sends him to a specialist.",
        "#Person2# has trouble breathing.\nThe doctor asks #Person2# about it and will send "
        "#Person2# to a pulmonary specialist.",
    ),
    SUMMARIES[1],
    (
        "The shares fell 3.5 percent on Tuesday.\nAnalysts blamed weak demand!",
        "Shares dropped 3.5% on Tuesday after the company reported weak demand.\nAnalysts were "
        "surprised.",
    ),
    (
        "Where is the station?\nPerson1 asks.\nPerson2 gives directions.",
        "#Person2# tells #Person1# the way to the train station.",
    ),
    SUMMARIES[4],
]


def reference_scorer() -> rouge_scorer.RougeScorer:
    """rouge_score itself, configured as tunespec documents it."""
    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)


def assert_same(ours: dict, theirs, metrics=METRICS) -> None:
    """Our per-sample dict equals rouge_score's Score tuples exactly."""
    for m in metrics:
        assert ours[m]["precision"] == pytest.approx(theirs[m].precision, abs=1e-12), m
        assert ours[m]["recall"] == pytest.approx(theirs[m].recall, abs=1e-12), m
        assert ours[m]["fmeasure"] == pytest.approx(theirs[m].fmeasure, abs=1e-12), m


# --- pinned, hand-checked values ---------------------------------------------------------


def test_hand_checked_cat_on_mat():
    # prediction: the cat sat on the mat   (6 tokens)
    # reference:  the cat is  on the mat   (6 tokens)
    # rouge1: clipped unigram overlap = the×2, cat, on, mat = 5  -> P = R = F = 5/6
    # rouge2: pred bigrams {the cat, cat sat, sat on, on the, the mat},
    #         ref  bigrams {the cat, cat is, is on, on the, the mat}
    #         overlap = the cat, on the, the mat = 3 of 5       -> P = R = F = 3/5
    # rougeL: LCS = "the cat on the mat" = 5                     -> P = R = F = 5/6
    # rougeLsum: one sentence each, so the same as rougeL        -> 5/6
    s = score_one("the cat sat on the mat", "the cat is on the mat")
    expected = {"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6, "rougeLsum": 5 / 6}
    for metric, value in expected.items():
        for part in ("precision", "recall", "fmeasure"):
            assert s[metric][part] == pytest.approx(value), (metric, part)


def test_hand_checked_short_prediction_precision_recall():
    # prediction: the cat (2 tokens); reference: the cat is on the mat (6 tokens)
    # rouge1: overlap 2 -> P = 2/2 = 1, R = 2/6 = 1/3, F = 2PR/(P+R) = (2/3)/(4/3) = 1/2
    # rouge2: overlap "the cat" -> P = 1/1, R = 1/5, F = (2/5)/(6/5) = 1/3
    s = score_one("the cat", "the cat is on the mat")
    assert (s["rouge1"]["precision"], s["rouge1"]["recall"]) == pytest.approx((1.0, 1 / 3))
    assert s["rouge1"]["fmeasure"] == pytest.approx(0.5)
    assert (s["rouge2"]["precision"], s["rouge2"]["recall"]) == pytest.approx((1.0, 1 / 5))
    assert s["rouge2"]["fmeasure"] == pytest.approx(1 / 3)


def test_stemmer_is_used():
    # Porter: cats -> cat, sitting -> sit, sits -> sit; so every unigram matches.
    s = score_one("cats sitting", "cat sits")
    assert s["rouge1"]["fmeasure"] == pytest.approx(1.0)


def test_rougelsum_uses_sentence_split():
    # prediction: "the cat sat. the dog ran."  reference: "the dog ran. the cat sat."
    # rougeL on the whole text: LCS("the cat sat the dog ran", "the dog ran the cat sat") = 3
    #   -> 3/6 = 0.5.
    # rougeLsum with one sentence per line: each reference sentence is matched in full by a
    #   prediction sentence: hits = 3 + 3 = 6 of 6 -> 1.0.
    s = score_one("the cat sat. the dog ran.", "the dog ran. the cat sat.")
    assert s["rougeL"]["fmeasure"] == pytest.approx(0.5)
    assert s["rougeLsum"]["fmeasure"] == pytest.approx(1.0)


def test_split_sentences_regex():
    text = "  Hello there. How are you?  Fine!\tDr. Who pays 3.5 dollars.\nYes "
    expected = "Hello there.\nHow are you?\nFine!\nDr.\nWho pays 3.5 dollars.\nYes"
    assert split_sentences(text) == expected
    assert split_sentences("no end mark") == "no end mark"
    assert split_sentences("") == ""


# --- agreement with rouge_score --------------------------------------------------------


def test_per_sample_identical_to_rouge_score():
    scorer = reference_scorer()
    result = score_pairs([p for p, _ in SUMMARIES], [[r] for _, r in SUMMARIES])
    pairs = zip(result.per_sample, SUMMARIES, SUMMARIES_ONE_SENTENCE_PER_LINE)
    for ours, (pred, ref), (pred_lines, ref_lines) in pairs:
        # rouge1/2/L: the text as-is.
        assert_same(ours, scorer.score(ref, pred), ("rouge1", "rouge2", "rougeL"))
        # rougeLsum: one sentence per line.
        assert_same(ours, scorer.score(ref_lines, pred_lines), ("rougeLsum",))
    assert result.per_sample[2]["rougeLsum"] != result.per_sample[2]["rougeL"]


def test_max_mode_matches_rouge_score_multi():
    scorer = reference_scorer()
    preds = [p for p, _ in SUMMARIES[:4]]
    refs = [[SUMMARIES[i][1], SUMMARIES[(i + 1) % 4][1]] for i in range(4)]
    result = score_pairs(preds, refs, multi_ref="max")
    for ours, pred, sample_refs in zip(result.per_sample, preds, refs):
        assert_same(ours, scorer.score_multi(sample_refs, pred), ("rouge1", "rouge2", "rougeL"))


# --- several references ------------------------------------------------------------------


def test_multi_ref_mean_and_max():
    pred = "the cat sat on the mat"
    refs = [["the cat is on the mat", "a dog ran"]]
    mean = score_pairs([pred], refs, multi_ref="mean").per_sample[0]
    best = score_pairs([pred], refs, multi_ref="max").per_sample[0]
    # against "a dog ran" nothing matches, so mean = (5/6 + 0) / 2.
    assert mean["rouge1"]["fmeasure"] == pytest.approx(5 / 12)
    assert mean["rouge2"]["fmeasure"] == pytest.approx(3 / 10)
    assert best["rouge1"]["fmeasure"] == pytest.approx(5 / 6)
    assert best["rouge2"]["fmeasure"] == pytest.approx(3 / 5)


def test_multi_ref_max_keeps_precision_recall_of_best_reference():
    pred = "the cat sat on the mat"
    # vs "the cat":                         P = 2/6, R = 1,   F = 1/2
    # vs "the cat sat on the mat today":    P = 1,   R = 6/7, F = 12/13  <- best
    refs = [["the cat", "the cat sat on the mat today"]]
    best = score_pairs([pred], refs, multi_ref="max").per_sample[0]["rouge1"]
    assert (best["precision"], best["recall"], best["fmeasure"]) == pytest.approx(
        (1.0, 6 / 7, 12 / 13)
    )
    mean = score_pairs([pred], refs, multi_ref="mean").per_sample[0]["rouge1"]
    assert (mean["precision"], mean["recall"], mean["fmeasure"]) == pytest.approx(
        ((1 / 3 + 1) / 2, (1 + 6 / 7) / 2, (1 / 2 + 12 / 13) / 2)
    )


# --- edge cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["", "   ", "...", "\n\n"])
def test_empty_prediction_scores_zero(prediction):
    result = score_pairs([prediction], [["the cat is on the mat", "a second one."]])
    for metric in METRICS:
        assert result.per_sample[0][metric] == {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
        assert result.aggregate[metric]["fmeasure"] == 0.0
    json.dumps(result.to_dict())


def test_empty_reference_list_raises():
    with pytest.raises(ScoreError) as err:
        score_pairs(["a", "b"], [["a"], []])
    assert "sample 1" in err.value.render()
    assert "empty reference list" in err.value.render()


@pytest.mark.parametrize(
    "preds, refs, kwargs, needle",
    [
        (["a"], [["a"], ["b"]], {}, "1 predictions but 2"),
        ([], [], {}, "nothing to score"),
        (["a"], ["a"], {}, "not a string"),
        ([None], [["a"]], {}, "not a string"),
        (["a"], [["a", 3]], {}, "not a string"),
        (["a"], [["a"]], {"multi_ref": "median"}, "multi-reference mode"),
    ],
)
def test_bad_inputs_raise_score_error(preds, refs, kwargs, needle):
    with pytest.raises(ScoreError) as err:
        score_pairs(preds, refs, **kwargs)
    assert needle in err.value.render()


# --- aggregate and bootstrap ---------------------------------------------------------------


def _small_result(**kwargs) -> RougeResult:
    preds = [p for p, _ in SUMMARIES] * 4
    refs = [[r] for _, r in SUMMARIES] * 4
    return score_pairs(preds, refs, **kwargs)


def test_aggregate_is_plain_mean_and_ci_brackets_it():
    result = _small_result()
    assert result.n == 20
    for metric in METRICS:
        agg = result.aggregate[metric]
        for part in ("precision", "recall", "fmeasure"):
            values = [s[metric][part] for s in result.per_sample]
            assert agg[part] == pytest.approx(sum(values) / len(values))
        assert agg["ci_low"] <= agg["fmeasure"] <= agg["ci_high"]
        assert agg["ci_low"] < agg["ci_high"]


def test_bootstrap_is_deterministic_for_a_seed():
    a, b = _small_result(seed=7), _small_result(seed=7)
    c = _small_result(seed=8)
    assert a.aggregate == b.aggregate
    assert any(a.aggregate[m]["ci_low"] != c.aggregate[m]["ci_low"] for m in METRICS)
    # a wider interval for a higher confidence level
    wide = _small_result(seed=7, confidence=0.99)
    assert wide.aggregate["rouge1"]["ci_low"] <= a.aggregate["rouge1"]["ci_low"]
    assert wide.aggregate["rouge1"]["ci_high"] >= a.aggregate["rouge1"]["ci_high"]


def test_no_bootstrap_gives_no_ci():
    result = _small_result(n_bootstrap=0)
    assert result.aggregate["rouge1"]["ci_low"] is None
    assert "[" not in markdown_table({"x": result}).splitlines()[2]


def test_to_dict_is_json_and_rounded():
    result = _small_result()
    d = json.loads(json.dumps(result.to_dict()))
    assert d["n"] == 20 and d["multi_ref"] == "mean"
    assert set(d["aggregate"]) == set(METRICS)
    assert set(d["aggregate"]["rouge1"]) == {"fmeasure", "precision", "recall", "ci_low", "ci_high"}
    f1 = d["aggregate"]["rouge1"]["fmeasure"]
    assert f1 == round(result.aggregate["rouge1"]["fmeasure"], 6)
    assert len(d["per_sample"]) == 20
    assert "per_sample" not in result.to_dict(include_per_sample=False)


def test_rounding_happens_in_to_dict_only():
    # rouge2 of "the cat" vs "the cat is on the mat" is 1/3 (see the hand-checked test).
    result = score_pairs(["the cat"], [["the cat is on the mat"]], n_bootstrap=0)
    assert result.aggregate["rouge2"]["fmeasure"] == pytest.approx(1 / 3, abs=1e-15)
    assert result.to_dict()["aggregate"]["rouge2"]["fmeasure"] == 0.333333
    assert result.to_dict()["per_sample"][0]["rouge2"]["recall"] == 0.2


def test_delta_and_markdown_table():
    base = score_pairs(["the cat", "a dog"], [["the cat is on the mat"], ["a dog ran"]])
    tuned = score_pairs(
        ["the cat is on the mat", "a dog ran"], [["the cat is on the mat"], ["a dog ran"]]
    )
    d = delta(base, tuned)
    assert set(d) == set(METRICS)
    assert d["rouge1"] == pytest.approx(1.0 - base.aggregate["rouge1"]["fmeasure"])
    table = markdown_table({"base": base, "tuned": tuned}, baseline="base")
    lines = table.splitlines()
    assert lines[0] == "| | n | rouge1 | rouge2 | rougeL | rougeLsum |"
    assert lines[2].startswith("| base | 2 | ")
    assert lines[3].startswith("| tuned | 2 | 100.00 [100.00, 100.00] |")
    assert lines[4].startswith("| Δ tuned − base | | +")
    assert "95% percentile bootstrap CI" in table
    with pytest.raises(ValueError):
        markdown_table({})
    with pytest.raises(ValueError):
        markdown_table({"base": base}, baseline="nope")


def test_speed_1000_samples():
    preds = [p for p, _ in SUMMARIES] * 200
    refs = [[r] for _, r in SUMMARIES] * 200
    start = time.perf_counter()
    result = score_pairs(preds, refs)
    assert result.n == 1000
    assert time.perf_counter() - start < 5.0


# --- real data -------------------------------------------------------------------------------


def test_dialogsum_first_sentence_matches_rouge_score():
    if not DIALOGSUM_DEV.is_file():
        pytest.skip("../shared/data not present: real-data test skipped")
    with DIALOGSUM_DEV.open(encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(100), f)]
    preds = [row["dialogue"].split("\n")[0] for row in rows]
    refs = [[row["summary"]] for row in rows]
    result = score_pairs(preds, refs, n_bootstrap=200)
    scorer = reference_scorer()
    for ours, pred, (ref,) in zip(result.per_sample, preds, refs):
        assert_same(ours, scorer.score(ref, pred), ("rouge1", "rouge2", "rougeL"))
        theirs = scorer.score(split_sentences(ref), split_sentences(pred))
        assert_same(ours, theirs, ("rougeLsum",))
    # several references, max mode = rouge_score's score_multi
    multi = [[row["summary"], row["topic"]] for row in rows]
    best = score_pairs(preds, multi, multi_ref="max", n_bootstrap=0)
    for ours, pred, sample_refs in zip(best.per_sample, preds, multi):
        assert_same(ours, scorer.score_multi(sample_refs, pred), ("rouge1", "rouge2", "rougeL"))
    assert 0.0 < result.aggregate["rouge1"]["fmeasure"] < 1.0
