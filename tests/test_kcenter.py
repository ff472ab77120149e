"""data.selection.kcenter: k-center greedy on row embeddings, against a hand-computed example, a second
implementation in plain Python, and the exact k-center optimum (brute force over every k-subset), which the
greedy choice must come within twice of (Gonzalez, 1985); through the compiler, the scores file and score-data."""

import itertools
import json
import math
from pathlib import Path

import helpers
import numpy as np
import pytest

from tunespec.compiler.kcenter import kcenter_greedy
from tunespec.errors import DataError, SpecError

OWN = [json.loads(line) for line in (helpers.DATA / "dialogues_train.jsonl").read_text().splitlines()]


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _angle(u, v) -> float:
    """The angle between two vectors: a metric on directions, ordered as the cosine distance is."""
    c = sum(a * b for a, b in zip(_unit(u), _unit(v)))
    return math.acos(max(-1.0, min(1.0, c)))


def _greedy_plain(vectors: list[list[float]], k: int) -> list[int]:
    """The same rule written out in plain Python over angles: start nearest the centroid of the unit vectors,
    then the row farthest from its nearest pick; ties to the earliest row."""
    units = [_unit(v) for v in vectors]
    centroid = [sum(col) / len(units) for col in zip(*units)]
    picks = [min(range(len(units)), key=lambda i: (_angle(units[i], centroid), i))]
    while len(picks) < k:
        rest = [i for i in range(len(units)) if i not in picks]
        picks.append(max(rest, key=lambda i: (min(_angle(units[i], units[p]) for p in picks), -i)))
    return picks


def _radius(vectors, centres) -> float:
    return max(min(_angle(v, vectors[c]) for c in centres) for v in vectors)


def test_a_hand_computed_example():
    """Unit directions at 0, 7, 90, 95 and 190 degrees, scaled by unlike lengths (only directions count).
    Their centroid points at about 64.7 degrees: 90 is nearest. Then 190 (100 degrees away, 0 is only 90),
    then 0 (90 from its nearest pick; 7 is 83), then 7 (7 from 0; 95 is 5 from 90), then 95."""
    degrees, scale = [0, 7, 90, 95, 190], [1.0, 3.0, 0.5, 2.0, 10.0]
    e = np.array([[s * math.cos(math.radians(d)), s * math.sin(math.radians(d))] for d, s in zip(degrees, scale)])
    assert [kcenter_greedy(e, k) for k in (0, 1, 2, 3, 4)] == [[], [2], [2, 4], [2, 4, 0], [2, 4, 0, 1]]
    assert kcenter_greedy(e, 5) == kcenter_greedy(e, 9) == [0, 1, 2, 3, 4]  # all asked: all, in row order


def test_ties_go_to_the_earliest_row():
    e = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 5.0]])  # two directions, each twice
    assert kcenter_greedy(e, 2) == [0, 2]  # both equally near the centroid: the first; then the first other
    assert kcenter_greedy(e, 3) == [0, 2, 1]  # then both at distance 0 from a pick: the first


@pytest.mark.parametrize("seed", range(6))
def test_equals_a_second_implementation_and_is_within_twice_the_optimum(seed):
    rng = np.random.default_rng(seed)
    n, d = 9, 4
    e = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0, size=(n, 1))
    vectors = e.tolist()
    for k in range(1, n):
        picks = kcenter_greedy(e, k)
        assert picks == _greedy_plain(vectors, k), k
        assert kcenter_greedy(e, k) == picks  # the same input, the same picks
        best = min(_radius(vectors, c) for c in itertools.combinations(range(n), k))
        assert _radius(vectors, picks) <= 2 * best + 1e-9, k


def test_one_pick_in_every_cluster_before_a_second_in_any():
    """Five tight clusters of unlike sizes (3 to 40 rows) in 16 dimensions, rows shuffled: the first five picks
    fall in five different clusters, the small ones included."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    sizes = [40, 3, 25, 10, 7]
    label = np.repeat(np.arange(5), sizes)
    e = centres[label] + 0.02 * rng.normal(size=(len(label), 16))
    order = rng.permutation(len(label))
    e, label = e[order], label[order]
    picks = kcenter_greedy(e, 12)
    assert sorted(label[picks[:5]]) == [0, 1, 2, 3, 4]
    assert picks == _greedy_plain(e.tolist(), 12)


# --------------------------------------------------------------------------- through the compiler


def _scores_file(path: Path, rows: dict[str, list[float]], ifd: dict[str, float] | None = None,
                 dim: int | None | str = "auto") -> Path:
    header = {"kind": "tunespec ifd scores", "version": 1}
    if dim == "auto":
        dim = len(next(iter(rows.values())))
    if dim is not None:
        header["embedding_dim"] = dim
    lines = [header] + [{"id": k, "ifd": (ifd or {}).get(k, 0.5), "embedding": v} for k, v in rows.items()]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _clustered(ids: list[str], clusters: int, seed: int = 0) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each id an embedding near one of `clusters` random directions (assigned round the ids)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, 8))
    label = {k: i % clusters for i, k in enumerate(ids)}
    return {k: (centres[label[k]] + 0.05 * rng.normal(size=8)).round(6).tolist() for k in ids}, label


def _kept(build: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (build / "data" / "train.jsonl").read_text().splitlines()]


def test_compile_keeps_the_greedy_choice_counts_the_rest_and_strict_refuses(tmp_path, make_spec, compile):
    ids = [r["id"] for r in OWN[:12]]
    emb, label = _clustered(ids, 3)
    _scores_file(tmp_path / "s.jsonl", emb)
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 12,
                                  "data.selection": {"kcenter": {"file": "s.jsonl", "keep": 3}}})
    result = compile(spec, tmp_path / "build")
    kept = _kept(tmp_path / "build")
    oracle = sorted(_greedy_plain([emb[k] for k in ids], 3))
    assert kept == [ids[i] for i in oracle]  # in source order
    assert sorted(label[k] for k in kept) == [0, 1, 2]  # one of each cluster
    reason = "not picked by k-center (data.selection.kcenter.keep 3)"
    assert result.manifest["dropped"]["selection"] == {reason: 9}
    assert f"9 row(s) dropped: {reason}" in "\n".join(result.messages)
    lock = (tmp_path / "build" / "lock.yaml").read_text()
    assert "selection_embeddings" in lock and "s.jsonl" in lock
    from tunespec.compiler.preview import render_row

    assert f"  selection: 9 {reason}" in render_row(tmp_path / "build")
    again = compile(spec, tmp_path / "again")  # a second compile makes the same choice
    assert _kept(tmp_path / "again") == kept and again.manifest["input_key"] == result.manifest["input_key"]
    strict = make_spec(tmp_path, "strict.yaml", **{"data.sources.0.limit": 12, "data.strict": True,
                                                    "data.selection": {"kcenter": {"file": "s.jsonl", "keep": 3}}})
    with pytest.raises(DataError, match="not picked by k-center"):
        compile(strict, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    _scores_file(tmp_path / "s.jsonl", _clustered(ids, 3, seed=1)[0])  # other embeddings: another build
    assert compile(spec, tmp_path / "build", force=True).manifest["input_key"] != result.manifest["input_key"]


def test_a_count_over_the_rows_keeps_them_all_and_says_so(tmp_path, make_spec, compile):
    ids = [r["id"] for r in OWN[:12]]
    _scores_file(tmp_path / "s.jsonl", _clustered(ids, 3)[0])
    over = make_spec(tmp_path, **{"data.sources.0.limit": 12,
                                  "data.selection": {"kcenter": {"file": "s.jsonl", "keep": 50}}})
    result = compile(over, tmp_path / "build")
    assert _kept(tmp_path / "build") == ids and "selection" not in result.manifest["dropped"]
    said = [m for m in result.messages if "k-center keeps 50 rows" in m]
    assert len(said) == 1 and "warning:" in said[0] and "only 12 train rows reach it" in said[0], result.messages
    assert "data.selection.kcenter.keep" in said[0]
    exact = make_spec(tmp_path, "exact.yaml", **{"data.sources.0.limit": 12,
                                                 "data.selection": {"kcenter": {"file": "s.jsonl", "keep": 12}}})
    assert not [m for m in compile(exact, tmp_path / "exact").messages if "k-center keeps" in m]


def test_ifd_first_then_kcenter_over_its_survivors_from_one_file(tmp_path, make_spec, compile):
    ids = [r["id"] for r in OWN[:12]]
    emb, _ = _clustered(ids, 4)
    ifd = dict(zip(ids, [0.5, 0.9, 1.2, 0.1, 0.95, 0.3, 1.0, 0.7, 0.2, 0.6, 0.8, 0.4]))
    _scores_file(tmp_path / "s.jsonl", emb, ifd)
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 12, "data.selection": {
        "ifd": {"file": "s.jsonl", "keep": 0.5}, "kcenter": {"keep": 0.5}}})
    result = compile(spec, tmp_path / "build")
    survivors = sorted((k for k in ids if ifd[k] < 1), key=lambda k: -ifd[k])[:6]
    survivors = [k for k in ids if k in survivors]  # source order
    oracle = sorted(_greedy_plain([emb[k] for k in survivors], 3))
    assert _kept(tmp_path / "build") == [survivors[i] for i in oracle]
    assert result.manifest["dropped"]["selection"] == {
        "IFD >= 1 (its prompt does not lower the answer's loss)": 2,
        "IFD under the kept share (data.selection.ifd.keep 0.5)": 4,
        "not picked by k-center (data.selection.kcenter.keep 0.5)": 3}


@pytest.mark.parametrize("edit, message", [
    (lambda lines: [{"kind": "tunespec ifd scores"}] + [{k: v for k, v in x.items() if k != "embedding"}
                                                         for x in lines[1:]], "has no embeddings"),
    (lambda lines: lines[:2] + [{**lines[2], "embedding": lines[2]["embedding"][:5]}] + lines[3:],
     "the embedding has 5 numbers, the header's embedding_dim is 8"),
    (lambda lines: lines[:2] + [{**lines[2], "embedding": [float("nan")] + lines[2]["embedding"][1:]}] + lines[3:],
     "not finite"),
    (lambda lines: lines[:2] + [{**lines[2], "embedding": [0] * 8}] + lines[3:], "all zeros"),
    (lambda lines: lines[:2] + [{"id": lines[2]["id"], "ifd": 0.5}] + lines[3:], 'has no "embedding"'),
    (lambda lines: lines[:2] + [{**lines[2], "embedding": ["x"] * 8}] + lines[3:], 'has no "embedding"'),
    (lambda lines: [{**lines[0], "embedding_dim": "8"}] + lines[1:], "embedding_dim is '8'"),
    (lambda lines: lines[:-1], "have no embedding"),
])
def test_a_bad_or_stale_embeddings_file_is_refused_naming_it(tmp_path, make_spec, compile, edit, message):
    ids = [r["id"] for r in OWN[:6]]
    path = _scores_file(tmp_path / "s.jsonl", _clustered(ids, 2)[0])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(x) + "\n" for x in edit(lines)))
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 6,
                                  "data.selection": {"kcenter": {"file": "s.jsonl", "keep": 2}}})
    with pytest.raises(DataError, match=message) as e:
        compile(spec, tmp_path / "build")
    p = e.value.problems[0]
    assert p.file == str(path) and p.path == "data.selection.kcenter.file" and "score-data" in p.hint
    if "line" in p.message:
        assert p.line == 3
    assert not (tmp_path / "build").exists()


def test_the_cli_exits_2_on_a_bad_file_and_the_spec_rules(tmp_path, make_spec, tunespec_env):
    from click.testing import CliRunner

    from tunespec.cli import main
    from tunespec.spec.loader import load_spec

    ids = [r["id"] for r in OWN[:4]]
    path = _scores_file(tmp_path / "s.jsonl", _clustered(ids, 2)[0], dim=9)
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 4,
                                  "data.selection": {"kcenter": {"file": "s.jsonl", "keep": 2}}})
    r = CliRunner().invoke(main, ["compile", str(spec), "-o", str(tmp_path / "build")])
    assert r.exit_code == 2 and str(path) in r.output and "embedding_dim is 9" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "build").exists()
    for selection, message in (({"kcenter": {"keep": 0.5}}, "neither data.selection.kcenter.file"),
                               ({"kcenter": {"file": "s.jsonl", "keep": 1.5}}, "a fraction must be in"),
                               ({"kcenter": {"file": "s.jsonl", "keep": 0}}, "greater than 0"),
                               ({"kcenter": {"file": "s.jsonl", "kep": 0.5}}, "kep")):
        bad = make_spec(tmp_path, "bad.yaml", **{"data.selection": selection})
        with pytest.raises(SpecError, match=message):
            load_spec(bad)


def test_rerun_names_changed_embeddings(tmp_path, make_spec, tunespec_env):
    from click.testing import CliRunner

    from tunespec.cli import main

    ids = [r["id"] for r in OWN[:8]]
    _scores_file(tmp_path / "s.jsonl", _clustered(ids, 2)[0])
    spec = make_spec(tmp_path, **{"data.sources.0.limit": 8,
                                  "data.selection": {"kcenter": {"file": "s.jsonl", "keep": 4}}})
    helpers.compile_spec(spec, tmp_path / "a")
    run = CliRunner().invoke(main, ["rerun", str(tmp_path / "a" / "lock.yaml"), "-o", str(tmp_path / "b")])
    assert run.exit_code == 0 and "reproduced" in run.output, run.output
    _scores_file(tmp_path / "s.jsonl", _clustered(ids, 2, seed=3)[0])
    run = CliRunner().invoke(main, ["rerun", str(tmp_path / "a" / "lock.yaml"), "-o", str(tmp_path / "c")])
    assert run.exit_code == 1 and "changed: data.selection.kcenter's scores file" in run.output, run.output


# --------------------------------------------------------------------------- score-data


def test_score_data_writes_the_models_mean_pooled_state_and_compile_reads_it(tmp_path, make_spec, tunespec_env):
    """A spec setting data.selection.kcenter: score-data writes embeddings (without --embeddings), each the
    mean of the model's final-norm hidden state (transformers' own last_hidden_state, one row alone, no
    padding) over the row's tokens, unit length; the same spec then compiles with them."""
    import torch
    from click.testing import CliRunner

    from tunespec.build_reader import Build
    from tunespec.cli import main
    from tunespec.runtime.modeling import load_variant, use_bf16

    spec = make_spec(tmp_path, **{"data.sources.0.limit": 10,
                                  "data.selection": {"kcenter": {"file": "scores.jsonl", "keep": 4}}})
    out = tmp_path / "scores.jsonl"
    r = CliRunner().invoke(main, ["score-data", str(spec), "-o", str(out)])
    assert r.exit_code == 0 and "with embeddings" in r.output, r.output
    header, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert header["embedding_dim"] == 64 and len(rows) == 10
    plain = make_spec(tmp_path, "plain.yaml", **{"data.sources.0.limit": 10})
    helpers.compile_spec(plain, tmp_path / "all")
    build = Build(tmp_path / "all")
    assert header["input_key"] == build.input_key
    model, _ = load_variant(build, "base")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(build.spec))
    tokens = build.tokens("train")
    for i, row in enumerate(rows):
        ids, _ = tokens.row(i)
        with torch.no_grad(), autocast:  # at score-data's precision (bf16 where `auto` finds a bf16 CPU)
            h = model.model(input_ids=torch.tensor(ids[None].astype(np.int64))).last_hidden_state[0].float().mean(0)
        assert row["id"] == build.rows("train")[i]["id"]
        assert row["embedding"] == pytest.approx((h / h.norm()).tolist(), abs=2e-5)
    result = helpers.compile_spec(spec, tmp_path / "build")
    kept = _kept(tmp_path / "build")
    picks = sorted(_greedy_plain([row["embedding"] for row in rows], 4))
    assert kept == [rows[i]["id"] for i in picks]
    assert result.manifest["dropped"]["selection"] == {"not picked by k-center (data.selection.kcenter.keep 4)": 6}
    r = CliRunner().invoke(main, ["score-data", str(plain), "-o", str(tmp_path / "ifd-only.jsonl")])
    assert r.exit_code == 0 and "embedding_dim" not in (tmp_path / "ifd-only.jsonl").read_text().splitlines()[0]
