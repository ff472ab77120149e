"""data.selection: duplicate and length filters on the train rows, against independent oracles: datasketch's
MinHash for the signatures, the true Jaccard similarity of every pair for the near-duplicate decisions."""

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

import helpers
from tunespec.compiler.records import Record
from tunespec.compiler.selection import select, shingles, signature
from tunespec.errors import DataError
from tunespec.spec.data import SelectionSpec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum" / "dev.jsonl"
OWN = [json.loads(line) for line in (helpers.DATA / "dialogues_train.jsonl").read_text().splitlines()]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_signatures_equal_datasketch_minhash():
    datasketch = pytest.importorskip("datasketch")
    texts = [r["dialogue"] for r in OWN[:50]] + ["", "one", "Ünïcode ÇA va? 日本語のテキスト です", "a b c d e f"]
    for text in texts:
        m = datasketch.MinHash(num_perm=128, seed=1, scheme="legacy")
        for s in shingles(text):
            m.update(s.encode("utf-8"))
        assert np.array_equal(m.hashvalues, signature(shingles(text))), text[:40]


def _edit(text: str, rng: random.Random, n: int) -> str:
    """`n` words of `text` replaced by others: a near copy."""
    words = text.split()
    for i in rng.sample(range(len(words)), min(n, len(words))):
        words[i] = rng.choice(["blue", "seven", "table", "quickly", "river"])
    return " ".join(words)


def _records(texts: list[str], prefix: str = "t") -> list[Record]:
    return [Record(id=f"{prefix}{i}", source=f"src#{i}", fields={"dialogue": t, "summary": f"s {i}"})
            for i, t in enumerate(texts)]


def _dialogues() -> list[str]:
    rows = [json.loads(line) for line in SHARED.read_text().splitlines()] if SHARED.exists() else OWN
    return [r["dialogue"] for r in rows]


def test_near_duplicates_are_the_pairs_whose_true_jaccard_is_high():
    """On real dialogues (DialogSum dev where ../shared is present, else the project's own) plus near copies
    made by replacing a few words: every copy with a true Jaccard of at least 0.92 to its original is dropped,
    no row is dropped whose closest earlier row is under 0.7, and the choice is the same on a second run."""
    rng = random.Random(0)
    originals = _dialogues()[:300]
    copies = [_edit(originals[i], rng, n) for i, n in zip(rng.sample(range(len(originals)), 60), itertools.cycle([1, 2, 4, 12]))]
    texts = originals + copies
    records = _records(texts)
    sel = SelectionSpec(dedup="near", near_threshold=0.85)
    kept, drops, first = select({"train": records}, lambda r: "summarization", sel)
    kept_ids = {r.id for r in kept}
    assert [r.id for r in select({"train": records}, lambda r: "summarization", sel)[0]] == [r.id for r in kept]
    sets = [shingles("dialogue: " + t + "\nsummary: s " + str(i)) for i, t in enumerate(texts)]
    for i, rec in enumerate(records):
        best = max((jaccard(sets[i], sets[j]) for j in range(i) if records[j].id in kept_ids), default=0.0)
        if rec.id not in kept_ids:
            assert best >= 0.7, (i, best)
        elif best >= 0.92:
            pytest.fail(f"row {i} kept though an earlier kept row has Jaccard {best:.3f}")
    dropped = len(records) - len(kept)
    high = sum(max((jaccard(sets[i], sets[j]) for j in range(i)), default=0.0) >= 0.92 for i in range(len(sets)))
    assert high >= 10 and dropped >= high and sum(drops.values()) == dropped  # the copies of one edit at least
    assert set(drops) <= {"near duplicate (MinHash Jaccard >= 0.85) of an earlier train row",
                          "exact duplicate of an earlier train row"}


def test_exact_duplicates_ignore_case_and_spacing_but_not_other_fields():
    rows = ["Hello there,  friend", "hello there, friend", "Hello there, friend!"]
    records = _records(rows)
    kept, drops, _ = select({"train": records}, lambda r: "summarization", SelectionSpec(dedup="exact"))
    # the second is the first with other case and spacing; the third differs (punctuation), and every row's
    # summary differs here, so only rows equal in every field are one
    assert [r.id for r in kept] == ["t0", "t1", "t2"]
    same = [Record(id=f"r{i}", source=f"src#{i}", fields={"dialogue": t, "summary": "S"}) for i, t in enumerate(rows)]
    kept, drops, first = select({"train": same}, lambda r: "summarization", SelectionSpec(dedup="exact"))
    assert [r.id for r in kept] == ["r0", "r2"] and drops == {"exact duplicate of an earlier train row": 1}
    assert first["exact duplicate of an earlier train row"].id == "r1"


def test_train_rows_repeating_an_evaluation_row_go_and_evaluation_rows_stay():
    test = _records(["the meeting is moved to friday at noon, tell everyone", "unrelated"], "e")
    train = _records(["The meeting is moved to Friday at noon,   tell everyone", "another row"], "t")
    train = [Record(id=r.id, source=r.source, fields={**r.fields, "summary": t.fields["summary"]})
             for r, t in zip(train, test)]
    kept, drops, _ = select({"train": train, "test": test}, lambda r: "summarization", SelectionSpec(dedup="exact"))
    assert [r.id for r in kept] == ["t1"] and drops == {"exact duplicate of a test row": 1}


def test_length_filters_count_the_completion_words_of_fields_and_chats():
    fields = [Record(id=str(i), source=f"s#{i}", fields={"dialogue": "d " * 50, "summary": "w " * n})
              for i, n in enumerate([0, 2, 5, 40])]
    chat = [Record(id="c", source="s#9", messages=[{"role": "user", "content": "many words " * 30},
                                                    {"role": "assistant", "content": "ok then"}])]
    fmt = lambda r: "messages" if r.messages else "summarization"  # noqa: E731
    kept, drops, _ = select({"train": fields + chat}, fmt, SelectionSpec(min_words=2, max_words=30))
    assert [r.id for r in kept] == ["1", "2", "c"]
    assert drops == {"completion under data.selection.min_words (2 words)": 1,
                     "completion over data.selection.max_words (30 words)": 1}


def test_compile_counts_selection_drops_locates_them_and_strict_refuses(tmp_path, make_spec, compile):
    """Through the compiler: a second source repeating rows of the first and one repeating a test row; the
    manifest counts them under dropped.selection, the warning names the file and line of the first, and
    --strict (data.strict) makes them an error."""
    train = OWN[:20]
    test = [json.loads(line) for line in (helpers.DATA / "dialogues_test.jsonl").read_text().splitlines()][:4]
    again = [dict(r, id=f"again-{i}") for i, r in enumerate(train[:5])] + [dict(test[0], id="leak")]
    for name, rows in (("a.jsonl", train), ("b.jsonl", again), ("t.jsonl", test)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = [{"path": str(tmp_path / "a.jsonl")}, {"path": str(tmp_path / "b.jsonl")},
               {"path": str(tmp_path / "t.jsonl"), "split": "test"}]
    spec = make_spec(tmp_path, **{"data.sources": sources, "data.selection": {"dedup": "near"}})
    result = compile(spec, tmp_path / "build")
    dropped = result.manifest["dropped"]["selection"]
    assert dropped == {"exact duplicate of an earlier train row": 5, "exact duplicate of a test row": 1}
    assert result.manifest["splits"]["train"]["rows"] == 20
    text = "\n".join(result.messages)
    assert f"{tmp_path / 'b.jsonl'}:1" in text and "5 row(s) dropped: exact duplicate of an earlier train row" in text
    from tunespec.compiler.preview import render_row

    shown = render_row(tmp_path / "build")
    assert "rows the compile left out: 6" in shown and "  selection: 5 exact duplicate of an earlier train row" in shown
    strict = make_spec(tmp_path, "strict.yaml", **{"data.sources": sources, "data.selection": {"dedup": "near"},
                                                    "data.strict": True})
    with pytest.raises(DataError, match="exact duplicate of a test row"):
        compile(strict, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
