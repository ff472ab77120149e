"""The compiler's model cache (``compiler.model_cache.load_for_compile``) and the fast tokenization path.

A model directory compiled once is compiled again without transformers or torch: its tokenizer is loaded
with the `tokenizers` library from the files transformers saved, its config from the values transformers
read. Everything here checks that this changes nothing: the same ids as transformers' tokenizer, the same
build files, a damaged or stale entry never used; and that rendering rows while they are encoded, in
chunks on a worker thread, gives what tokenizing the rendered list gives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compile_fixtures import SHARED, SPECS_DATA, compile_spec, smollm2, tiny, tiny_model_path, write_spec

QA = SPECS_DATA / "qa_sample.jsonl"
INSTRUCTIONS = SPECS_DATA / "instructions_sample.json"
CHAT = SPECS_DATA / "chat_sample.jsonl"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private TUNESPEC_CACHE, sharing the converted models of the usual one (converted once)."""
    root = tmp_path / "cache"
    shared = Path(os.environ["TUNESPEC_CACHE"]) / "models"
    shared.mkdir(parents=True, exist_ok=True)
    root.mkdir()
    (root / "models").symlink_to(shared, target_is_directory=True)
    monkeypatch.setenv("TUNESPEC_CACHE", str(root))
    return root


def model_copy(tmp_path: Path) -> Path:
    """A private copy of the tiny model directory (a directory the cache has never seen)."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_path(), dst)
    return dst


def entries(cache: Path) -> list[Path]:
    folder = cache / "compile"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def files_of(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*"))
            if p.is_file() and p.name != "lock.yaml"}


def texts() -> list[str]:
    out = []
    for line in QA.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out += [row["question"], row["answer"]]
    for row in json.loads(INSTRUCTIONS.read_text(encoding="utf-8")):
        out += [row["instruction"], row.get("input", ""), row["output"]]
    for line in CHAT.read_text(encoding="utf-8").splitlines():
        out += [m["value"] for m in json.loads(line)["conversations"]]
    alpaca = SHARED / "alpaca" / "alpaca_en_demo.json"
    if alpaca.is_file():  # the real data set, where present
        out += [r[k] for r in json.loads(alpaca.read_text(encoding="utf-8"))[:300] for k in ("instruction", "output")]
    return out + ["", " ", "\n\n", "caf\u00e9 \u20ac14.50 Z\u00fcrich \U0001f600", "<s></s><|im_start|>user\nhi<|im_end|>\n",
                  "  leading and trailing  ", "\t\r\n"]


# --------------------------------------------------------------------------- the tokenizer


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_the_cached_tokenizer_encodes_exactly_like_transformers(which, cache):
    from tunespec.compiler.model_cache import CachedTokenizer, load_for_compile
    from tunespec.compiler.tokenization import encode_texts
    from tunespec.model_resolver import ModelRef, load_tokenizer, resolve
    from tunespec.special_prefix import special_prefix

    model = tiny() if which == "tiny" else smollm2()
    ref = ModelRef(path=model.get("path"), packaged=model.get("packaged"))
    model_dir = resolve(ref)
    first, _ = load_for_compile(ref, model_dir)
    cached, config = load_for_compile(ref, model_dir)
    assert not isinstance(first, CachedTokenizer) and isinstance(cached, CachedTokenizer)
    auto = load_tokenizer(ref, model_dir)
    sample = texts()
    for special in (False, True):
        assert cached(sample, add_special_tokens=special)["input_ids"] == auto(sample, add_special_tokens=special)["input_ids"]
        for text in sample[:50]:
            assert cached(text, add_special_tokens=special)["input_ids"] == auto(text, add_special_tokens=special)["input_ids"]
    assert encode_texts(cached, sample) == auto(sample, add_special_tokens=False)["input_ids"]
    assert special_prefix(cached) == special_prefix(auto)
    for name in ("eos_token", "eos_token_id", "bos_token", "bos_token_id", "pad_token", "pad_token_id", "chat_template"):
        assert getattr(cached, name) == getattr(auto, name), name
    assert len(cached) == len(auto)
    ids = list(range(len(auto)))
    assert cached.convert_ids_to_tokens(ids) == auto.convert_ids_to_tokens(ids)
    assert all(cached.convert_tokens_to_string([t]) == auto.convert_tokens_to_string([t])
               for t in auto.convert_ids_to_tokens(ids))
    from tunespec.compiler.architecture import architecture_of
    from tunespec.compiler.tokenization import context_length
    from tunespec.model_resolver import load_config

    full = load_config(ref, model_dir)
    assert architecture_of(config) == architecture_of(full) and context_length(config) == context_length(full)
    assert config.vocab_size == full.vocab_size and config.get_text_config().vocab_size == full.vocab_size


# --------------------------------------------------------------------------- builds


def spec_for(tmp_path: Path, model: dict, **data) -> Path:
    base = {"format": "alpaca", "sources": [{"path": str(INSTRUCTIONS)}], "template": "alpaca",
            "holdout": {"test": 0.25}, "tokenization": {"max_length": 256}}
    return write_spec(tmp_path / "spec", data={**base, **data}, model=model)


@pytest.mark.parametrize("data", [
    {},
    {"format": "sharegpt", "sources": [{"path": str(CHAT)}], "template": "chatml",
     "tokenization": {"max_length": 64, "overlong": "truncate_prompt"}},
    {"format": "qa", "sources": [{"path": str(QA)}], "template": "question_answer",
     "tokenization": {"max_length": 256, "train_on": "all", "add_eos": False}},
], ids=["alpaca", "chatml-truncated", "qa-all-no-eos"])
def test_a_model_seen_before_compiles_to_the_same_files(tmp_path, cache, data):
    model = model_copy(tmp_path)
    spec = spec_for(tmp_path, {"path": str(model)}, **data)
    first = files_of(compile_spec(spec, tmp_path / "one").path)  # transformers; fills the cache
    assert len(entries(cache)) == 1
    second = files_of(compile_spec(spec, tmp_path / "two").path)  # from the cache
    assert first == second


def test_a_compile_from_the_cache_imports_neither_transformers_nor_torch(tmp_path, cache):
    model = model_copy(tmp_path)
    spec = spec_for(tmp_path, {"path": str(model)})
    compile_spec(spec, tmp_path / "one")
    code = ("import sys; from tunespec.cli import main\n"
            f"try:\n    main(['compile', {str(spec)!r}, '-o', {str(tmp_path / 'two')!r}])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")


def test_chat_templates_and_added_tokens_load_with_transformers(tmp_path, cache):
    from tunespec.compiler.model_cache import CachedTokenizer, load_for_compile
    from tunespec.model_resolver import ModelRef

    model = model_copy(tmp_path)
    ref = ModelRef(path=str(model))
    load_for_compile(ref, str(model))
    assert isinstance(load_for_compile(ref, str(model))[0], CachedTokenizer)
    assert not isinstance(load_for_compile(ref, str(model), plain=False)[0], CachedTokenizer)
    spec = write_spec(tmp_path / "chat", data={"format": "sharegpt", "sources": [{"path": str(CHAT)}],
                                               "template": "tokenizer"}, model={"path": str(model)})
    one = files_of(compile_spec(spec, tmp_path / "one").path)
    assert one == files_of(compile_spec(spec, tmp_path / "two").path)


def test_a_changed_model_file_is_a_new_entry(tmp_path, cache):
    model = model_copy(tmp_path)
    spec = spec_for(tmp_path, {"path": str(model)})
    compile_spec(spec, tmp_path / "one")
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["eos_token"] = "<|im_end|>"
    (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    two = compile_spec(spec, tmp_path / "two")
    assert len(entries(cache)) == 2
    three = compile_spec(spec, tmp_path / "three")
    im_end = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    eos = next(t["id"] for t in im_end["added_tokens"] if t["content"] == "<|im_end|>")
    assert two.manifest["eos_token_id"] == three.manifest["eos_token_id"] == eos
    assert files_of(two.path) == files_of(three.path)


@pytest.mark.parametrize("damage", ["tokenizer.json", "probe", "facts.json"])
def test_a_damaged_entry_is_replaced_not_used(tmp_path, cache, damage):
    model = model_copy(tmp_path)
    spec = spec_for(tmp_path, {"path": str(model)})
    first = files_of(compile_spec(spec, tmp_path / "one").path)
    (entry,) = entries(cache)
    if damage in ("tokenizer.json", "probe"):  # still valid JSON, but not what transformers saved: another EOS
        path = entry / "tokenizer" / "tokenizer.json"
        path.write_text(path.read_text(encoding="utf-8").replace('"</s>"', '"</S>"'), encoding="utf-8")
        if damage == "probe":  # the recorded hash updated too: only the probe's ids tell
            from tunespec.hashing import sha256_file

            facts = json.loads((entry / "facts.json").read_text(encoding="utf-8"))
            facts["tokenizer"]["files"]["tokenizer.json"] = sha256_file(path)
            (entry / "facts.json").write_text(json.dumps(facts), encoding="utf-8")
    else:
        (entry / "facts.json").write_text("{", encoding="utf-8")
    assert files_of(compile_spec(spec, tmp_path / "two").path) == first
    assert files_of(compile_spec(spec, tmp_path / "three").path) == first
    assert (entry / "facts.json").is_file() and json.loads((entry / "facts.json").read_text(encoding="utf-8"))


def test_truncation_and_padding_in_tokenizer_json_are_off_as_with_transformers(tmp_path, cache):
    model = model_copy(tmp_path)
    path = model / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    doc["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 2,
                      "pad_type_id": 0, "pad_token": "</s>"}
    path.write_text(json.dumps(doc), encoding="utf-8")
    spec = spec_for(tmp_path, {"path": str(model)})
    first = compile_spec(spec, tmp_path / "one")
    assert first.manifest["splits"]["train"]["length"]["max"] > 8  # not truncated
    assert files_of(first.path) == files_of(compile_spec(spec, tmp_path / "two").path)


def test_an_unwritable_cache_only_costs_speed(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("TUNESPEC_CACHE", str(blocker))
    model = model_copy(tmp_path)
    spec = spec_for(tmp_path, {"path": str(model)})
    one = files_of(compile_spec(spec, tmp_path / "one").path)
    assert one == files_of(compile_spec(spec, tmp_path / "two").path)


# --------------------------------------------------------------------------- encoding while rendering


def _rows(n: int):
    from tunespec.templating.segments import Segment

    sample = texts()
    return [[Segment(sample[i % len(sample)] + f" #{i % 7}", False), Segment(sample[(3 * i) % len(sample)], True)]
            for i in range(n)]


@pytest.mark.parametrize("chunk", [1, 5, 2048])
def test_rows_rendered_while_encoding_equal_the_rendered_list(monkeypatch, chunk):
    import tunespec.compiler.tokenization as tk
    from tunespec.model_resolver import ModelRef, load_tokenizer

    monkeypatch.setattr(tk, "ENCODE_CHUNK", chunk)
    tok = load_tokenizer(ModelRef(path=str(tiny_model_path())))
    rows = _rows(300)
    a = tk.tokenize_examples(rows, tok, max_length=60, overlong="truncate_prompt")
    b = tk.tokenize_examples(iter(rows), tok, max_length=60, overlong="truncate_prompt")
    assert b.examples == rows and a.kept == b.kept and a.dropped == b.dropped and a.truncated == b.truncated > 0
    for x, y in ((a.ids, b.ids), (a.trained, b.trained), (a.offsets, b.offsets)):
        assert x.tolist() == y.tolist()
    expected = tok([s.text for r in rows for s in r], add_special_tokens=False)["input_ids"]
    assert tk.encode_texts(tok, [s.text for r in rows for s in r]) == expected


def test_a_backend_that_disagrees_with_the_tokenizer_is_not_used(monkeypatch):
    """The first text's ids from the backend are checked against an ordinary call; on a difference every
    text is encoded with ordinary calls."""
    import tunespec.compiler.tokenization as tk
    from tunespec.model_resolver import ModelRef, load_tokenizer

    monkeypatch.setattr(tk, "ENCODE_CHUNK", 3)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tiny_tok = load_tokenizer(ModelRef(path=str(tiny_model_path())))
    words = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()

    class Mismatched:  # calls the tiny tokenizer, but offers a backend that encodes every word as [UNK]
        backend_tokenizer = words

        def __call__(self, *args, **kwargs):
            return tiny_tok(*args, **kwargs)

    sample = texts()
    assert tk.encode_texts(Mismatched(), sample) == tiny_tok(sample, add_special_tokens=False)["input_ids"]
