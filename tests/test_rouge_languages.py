"""ROUGE for every language: the tokenizers of tunespec.runtime.rouge against rouge_score and by hand.

English must score exactly as ``rouge_score.rouge_scorer.RougeScorer(use_stemmer=True)`` does (real
DialogSum text); Chinese, Japanese and Russian must not score 0 (rouge_score's own tokenizer keeps ASCII
letters and digits only), and a few non-identical pairs are checked against F1 computed here by hand from
the token lists.
"""

from __future__ import annotations

import json

import pytest
from compile_fixtures import shared
from rouge_score import rouge_scorer

from tunespec.errors import ScoreError
from tunespec.runtime import rouge
from tunespec.runtime.scorefiles import score_files


def f1(hits: int, n_pred: int, n_ref: int) -> float:
    p, r = hits / n_pred, hits / n_ref
    return 2 * p * r / (p + r)


IDENTICAL = {
    "zh": ("今天天气很好，我们去公园散步吧。", "jieba"),
    "ja": ("今日はとても良い天気ですね。公園に行きましょう。", "characters"),
    "ru": ("Сегодня хорошая погода. Пойдём гулять в парк!", "words"),
}


@pytest.mark.parametrize("lang", sorted(IDENTICAL))
def test_identical_text_scores_100_in_every_language(lang):
    text, expected_tokenizer = IDENTICAL[lang]
    res = rouge.score_pairs([text], [[text]], n_bootstrap=0)
    assert res.tokenizer == expected_tokenizer
    assert {m: res.f1(m) for m in rouge.METRICS} == {m: 1.0 for m in rouge.METRICS}
    # The bug this replaces: rouge_score's own tokenizer finds no token, so everything is 0.
    old = rouge.score_pairs([text], [[text]], n_bootstrap=0, tokenizer="default")
    assert {m: old.f1(m) for m in rouge.METRICS} == {m: 0.0 for m in rouge.METRICS}


def _dialogsum_pairs() -> tuple[list[str], list[list[str]]]:
    rows = [json.loads(line) for line in shared("dialogsum/dev.jsonl").read_text(encoding="utf-8").splitlines()]
    # Prediction: a neighbour's summary, or the dialogue's first turns: overlaps of every size.
    preds = [rows[(i + 1) % len(rows)]["summary"] if i % 2 else " ".join(r["dialogue"].split("\n")[:2])
             for i, r in enumerate(rows)]
    return preds, [[r["summary"]] for r in rows]


def test_english_equals_rouge_score_exactly_on_dialogsum():
    preds, refs = _dialogsum_pairs()
    res = rouge.score_pairs(preds, refs, n_bootstrap=0)  # auto
    assert res.tokenizer == "default"
    oracle = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for i, (pred, (ref,)) in enumerate(zip(preds, refs)):
        plain = oracle.score(ref, pred)
        lsum = oracle.score(ref.replace(". ", ".\n"), pred.replace(". ", ".\n"))["rougeLsum"]
        for m in ("rouge1", "rouge2", "rougeL"):
            assert res.per_sample[i][m]["fmeasure"] == plain[m].fmeasure, (i, m)
            assert res.per_sample[i][m]["precision"] == plain[m].precision, (i, m)
        if "! " not in ref + pred and "? " not in ref + pred and "  " not in ref + pred and "\n" not in ref + pred:
            assert res.per_sample[i]["rougeLsum"]["fmeasure"] == lsum.fmeasure, i
    assert len(preds) == 500


def test_chinese_jieba_by_hand():
    import jieba

    pred, ref = "我喜欢北京", "我爱北京天安门"
    assert jieba.lcut(pred) == ["我", "喜欢", "北京"]
    assert jieba.lcut(ref) == ["我", "爱", "北京", "天安门"]
    s = rouge.score_one(pred, ref, "jieba")
    assert s["rouge1"]["fmeasure"] == pytest.approx(f1(2, 3, 4))  # 我, 北京
    assert s["rouge2"]["fmeasure"] == 0.0  # bigrams 我喜欢/喜欢北京 vs 我爱/爱北京/北京天安门
    assert s["rougeL"]["fmeasure"] == pytest.approx(f1(2, 3, 4))  # LCS 我 北京


def test_japanese_characters_by_hand():
    pred, ref = "今日は晴れ", "今日は雨"
    s = rouge.score_pairs([pred], [[ref]], n_bootstrap=0)
    assert s.tokenizer == "characters"
    one = s.per_sample[0]
    assert one["rouge1"]["fmeasure"] == pytest.approx(f1(3, 5, 4))  # 今 日 は
    assert one["rouge2"]["fmeasure"] == pytest.approx(f1(2, 4, 3))  # 今日 日は
    assert one["rougeL"]["fmeasure"] == pytest.approx(f1(3, 5, 4))  # LCS 今日は


def test_russian_words_lowercased_by_hand():
    s = rouge.score_pairs(["Кошка сидит на ковре."], [["кошка спит на ковре"]], n_bootstrap=0)
    assert s.tokenizer == "words"
    assert s.per_sample[0]["rouge1"]["fmeasure"] == pytest.approx(f1(3, 4, 4))
    assert s.per_sample[0]["rouge2"]["fmeasure"] == pytest.approx(f1(1, 3, 3))  # на ковре


def test_lsum_splits_at_cjk_full_stops():
    assert rouge.split_sentences("今天下雨。明天晴天！好吗？") == "今天下雨。\n明天晴天！\n好吗？"
    assert rouge.split_sentences("Hi. there") == "Hi.\nthere"
    pred, ref = "明天晴天。今天下雨。", "今天下雨。明天晴天。"
    s = rouge.score_one(pred, ref, "characters")
    # One sequence: LCS 今天下雨 = 4 of 8 characters; by sentences each reference sentence is matched whole.
    assert s["rougeL"]["fmeasure"] == pytest.approx(f1(4, 8, 8))
    assert s["rougeLsum"]["fmeasure"] == pytest.approx(1.0)


def test_choose_tokenizer():
    assert rouge.choose_tokenizer(["The café is open."]) == "default"
    assert rouge.choose_tokenizer(["今天天气很好"]) == "jieba"
    assert rouge.choose_tokenizer(["今日は晴れ"]) == "characters"
    assert rouge.choose_tokenizer(["วันนี้อากาศดี"]) == "characters"
    assert rouge.choose_tokenizer(["Καλημέρα κόσμε", "Привет"]) == "words"


def test_score_files_records_tokenizer_and_rejects_unknown(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": 1, "prediction": "今日は雨"}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": 1, "reference": "今日は雨"}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    out = score_files(tmp_path / "p.jsonl", tmp_path / "r.jsonl", n_bootstrap=0)
    assert out["tokenizer"] == "characters" and out["aggregate"]["rouge1"]["fmeasure"] == 1.0
    out = score_files(tmp_path / "p.jsonl", tmp_path / "r.jsonl", n_bootstrap=0, tokenizer="words")
    assert out["tokenizer"] == "words" and out["aggregate"]["rouge1"]["fmeasure"] == 1.0
    with pytest.raises(ScoreError, match="unknown ROUGE tokenizer 'klingon'"):
        score_files(tmp_path / "p.jsonl", tmp_path / "r.jsonl", tokenizer="klingon")
