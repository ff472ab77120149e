"""The de-quantized copy of a GGUF model carries the special tokens the GGUF file itself names.

Oracle: the file's own metadata (`tokenizer.ggml.*_token_id`, read by the `gguf` package) and SmolLM2's model
card (BOS <|im_start|>, EOS <|im_end|>). Seen on transformers 5.17 (the GPU image's): its GGUF reader gave
SmolLM2's tokenizer EOS <|im_start|> and no pad token, so every turn looked like it ended twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from compile_fixtures import smollm2

from tunespec import model_resolver as models


def test_the_packaged_gguf_names_smollm2s_own_special_tokens():
    gguf = models.packaged_gguf(smollm2()["packaged"])
    ids = models.gguf_special_ids(gguf)
    tok = models.load_tokenizer(models.ModelRef(packaged=smollm2()["packaged"]))
    assert {k: tok.convert_ids_to_tokens(i) for k, i in ids.items()} == {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ids["bos_token"], ids["eos_token"], ids["pad_token"])
    converted = Path(models.resolve(models.ModelRef(packaged=smollm2()["packaged"])))
    assert (converted / models._MARKER).read_text().strip() == models.CONVERSION
    saved = json.loads((converted / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (saved["bos_token"], saved["eos_token"]) == ("<|im_start|>", "<|im_end|>")


def test_a_misread_eos_is_repaired_from_the_file(tmp_path):
    """What transformers 5.17 produced, rebuilt by hand on SmolLM2's real tokenizer: EOS <|im_start|>, no pad."""
    from transformers import AutoTokenizer

    gguf = models.packaged_gguf(smollm2()["packaged"])
    tok = AutoTokenizer.from_pretrained(models.resolve(models.ModelRef(packaged=smollm2()["packaged"])))
    tok.eos_token = "<|im_start|>"
    tok.pad_token = None
    changed = models.repair_special_tokens(tok, models.gguf_special_ids(gguf))
    assert changed == ["eos_token: <|im_start|> -> <|im_end|>", "pad_token: None -> <|im_end|>"]
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 2)
    assert models.repair_special_tokens(tok, models.gguf_special_ids(gguf)) == []  # nothing left to repair


def test_an_older_conversion_in_the_cache_is_made_again(tmp_path, monkeypatch):
    """A conversion without this CONVERSION's marker (made before the repair) is replaced, not reused."""
    monkeypatch.setenv("TUNESPEC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    made = []

    def dequantize(src, out):
        made.append(out)
        (out / "config.json").write_text("{}")
        (out / "tokenizer.json").write_text('{"new": true}')

    monkeypatch.setattr(models, "_dequantize_gguf", dequantize)
    ref = models.ModelRef(path=str(tmp_path), gguf_file="m.gguf")
    target = models.cache_root() / "models" / f"m-{models.sha256_file(gguf)[:16]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "tokenizer.json").write_text('{"old": true}')
    assert models.resolve(ref) == str(target) and len(made) == 1
    assert json.loads((target / "tokenizer.json").read_text()) == {"new": True}
    assert models.resolve(ref) == str(target) and len(made) == 1  # current now: reused
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
