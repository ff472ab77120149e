"""data.selection: duplicate and length filters on the train rows, against independent oracles: datasketch's
MinHash for the signatures, the true Jaccard similarity of every pair for the near-duplicate decisions."""

import itertools
import json
import random
from pathlib import Path

import helpers
import numpy as np
import pytest

from tunespec.compiler.selection import select, shingles, signature
from tunespec.errors import DataError
from tunespec.records import Record
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
    if SHARED.exists():
        return [json.loads(line)["dialogue"] for line in SHARED.read_text().splitlines()]
    # the project's own dialogues are shorter than DialogSum's: three of them make a text of DialogSum's length
    return ["\n".join(OWN[(i + k) % len(OWN)]["dialogue"] for k in range(3)) for i in range(len(OWN))]


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


# --------------------------------------------------------------------------- IFD


def test_score_data_equals_the_models_own_loss_with_and_without_the_prompt(tmp_path, make_spec, tunespec_env):
    """`tunespec score-data` against transformers' own loss (model(..., labels=...).loss, a mean over the
    labelled tokens), row by row: after the whole row, and after only the build's prefix (or EOS)."""
    import torch
    from click.testing import CliRunner

    from tunespec.build_reader import Build
    from tunespec.cli import main
    from tunespec.runtime.modeling import load_variant, use_bf16

    spec = make_spec(tmp_path, **{"data.sources.0.limit": 12})
    out = tmp_path / "scores.jsonl"
    r = CliRunner().invoke(main, ["score-data", str(spec), "-o", str(out)])
    assert r.exit_code == 0, r.output
    header, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert header["kind"] == "tunespec ifd scores" and header["rows"] == len(rows) == 12
    helpers.compile_spec(spec, tmp_path / "build")
    build = Build(tmp_path / "build")
    assert header["input_key"] == build.input_key
    model, _ = load_variant(build, "base")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(build.spec))
    # a padded batch and a row alone are other matmul shapes: in fp32 they agree to rounding, in bf16 to its own
    tol = 1e-4 if use_bf16(build.spec) else 2e-5
    tokens, start = build.tokens("train"), build.prefix_ids or [build.eos_token_id]
    for i, row in enumerate(rows):
        ids, trained = tokens.row(i)
        ids = torch.tensor(ids[None].astype(np.int64))
        labels = torch.where(torch.tensor(trained[None].astype(bool)), ids, -100)
        answer = ids[labels != -100].tolist()
        alone = torch.tensor([start + answer])
        alone_labels = torch.tensor([[-100] * len(start) + answer])
        with torch.no_grad(), autocast:  # at score-data's precision (bf16 where `auto` finds a bf16 CPU)
            loss = float(model(input_ids=ids, labels=labels).loss)
            loss_alone = float(model(input_ids=alone, labels=alone_labels).loss)
        assert row["id"] == build.rows("train")[i]["id"]
        assert row["loss"] == pytest.approx(loss, abs=tol) and row["loss_alone"] == pytest.approx(loss_alone, abs=tol)
        assert row["ifd"] == pytest.approx(loss / loss_alone, abs=tol / 2)


def _scores(path: Path, ifd: dict[str, float]) -> Path:
    lines = [{"kind": "tunespec ifd scores", "version": 1}] + [{"id": k, "ifd": v} for k, v in ifd.items()]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_ifd_keeps_the_share_with_the_highest_score_under_one(tmp_path, make_spec, compile):
    ids = [r["id"] for r in OWN[:10]]
    values = [0.5, 0.9, 1.2, 0.1, 0.95, 0.3, 1.0, 0.7, 0.2, 0.6]
    scores = _scores(tmp_path / "s.jsonl", dict(zip(ids, values)))
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 10, "data.selection": {"ifd": {"file": str(scores), "keep": 0.4}}})
    result = compile(spec, tmp_path / "build")
    kept = [json.loads(line)["id"] for line in (tmp_path / "build" / "data" / "train.jsonl").read_text().splitlines()]
    assert kept == [ids[1], ids[4], ids[7], ids[9]]  # 4 of 10: 0.9, 0.95, 0.7, 0.6, in source order
    assert result.manifest["dropped"]["selection"] == {
        "IFD >= 1 (its prompt does not lower the answer's loss)": 2,
        "IFD under the kept share (data.selection.ifd.keep 0.4)": 4}
    key = result.manifest["input_key"]
    _scores(scores, dict(zip(ids, values[::-1])))  # other scores: another build, not "up to date"
    again = compile(spec, tmp_path / "build", force=True)
    assert not again.reused and again.manifest["input_key"] != key


@pytest.mark.parametrize("lines, message", [
    (['{"kind": "something else"}'], "is not a scores file"),
    (['{"kind": "tunespec ifd scores"}', '{"id": "train-0001", "ifd": "high"}'], "line 2 of the scores file"),
    (['{"kind": "tunespec ifd scores"}', '{"id": "train-0001", "ifd": -1}'], "line 2 of the scores file"),
    (['{"kind": "tunespec ifd scores"}', '{"id": "train-0001", "ifd": 0.5}', '{"id": "train-0001", "ifd": 0.5}'],
     "scored twice"),
    (['{"kind": "tunespec ifd scores"}', '{"id": "train-0001", "ifd": 0.5}'], "have no score"),
])
def test_a_bad_or_stale_scores_file_is_refused_at_its_line(tmp_path, make_spec, compile, lines, message):
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 4, "data.selection": {"ifd": {"file": "s.jsonl"}}})
    with pytest.raises(DataError, match=message) as e:
        compile(spec, tmp_path / "build")
    if "line" in message:
        assert e.value.problems[0].line == 2 and e.value.problems[0].file == str(tmp_path / "s.jsonl")
    assert not (tmp_path / "build").exists()


def test_rerun_names_changed_scores(tmp_path, make_spec, tunespec_env):
    """The lock records the scores file (portable path, sha256): a rerun after they changed says so."""
    from click.testing import CliRunner

    from tunespec.cli import main

    ids = [r["id"] for r in OWN[:8]]
    scores = _scores(tmp_path / "s.jsonl", dict(zip(ids, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])))
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 8, "data.selection": {"ifd": {"file": "s.jsonl", "keep": 0.5}}})
    helpers.compile_spec(spec, tmp_path / "a")
    run = CliRunner().invoke(main, ["rerun", str(tmp_path / "a" / "lock.yaml"), "-o", str(tmp_path / "b")])
    assert run.exit_code == 0 and "reproduced" in run.output, run.output
    _scores(scores, dict(zip(ids, [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])))
    run = CliRunner().invoke(main, ["rerun", str(tmp_path / "a" / "lock.yaml"), "-o", str(tmp_path / "c")])
    assert run.exit_code == 1 and "changed: data.selection.ifd.file" in run.output, run.output
