"""Model directories for real tokenizer families, built offline from the families' own PyPI packages.

Each directory holds a Hugging Face tokenizer converted from the family's original tokenizer file, its
chat template, and a tiny random ``LlamaForCausalLM`` with the family's vocabulary size (enough to compile,
train a few steps and generate). The reference implementations the conformance tests compare against
are the same packages' own encoders (``reference_llama3``, ``reference_mistral``).

* ``llama3_dir()``: Meta's Llama-3 ``tokenizer.model`` (tiktoken BPE, shipped in ``llama-models``),
  converted with transformers' ``TikTokenConverter``; BOS ``<|begin_of_text|>`` put before every text
  by the post-processor (as Meta's published tokenizers do); EOS ``<|eot_id|>``; a chat template in
  the format Meta documents for Llama 3 (it writes ``{{ bos_token }}`` itself).
* ``mistral_dir(version)``: a SentencePiece tokenizer shipped in ``mistral-common`` (``v1``: Mistral
  7B v0.1's, ``v3``: the 2024 one with control tokens ``[INST]``/``[/INST]``), converted with
  transformers' ``SpmConverter`` with the pre-tokenizer of Mistral's own Hugging Face ``tokenizer.json``
  files (``Metaspace``, ``prepend_scheme: first``: the dummy ``▁`` only at the start of a text, not after
  each special token; text starting with a space then differs from ``SentencePieceProcessor.encode``, as
  with the hub's files), control pieces as special tokens, BOS ``<s>`` before every text, EOS ``</s>``;
  the chat template is the one ``mistral-common`` generates for that tokenizer file (it writes
  ``{{ bos_token }}`` itself).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

# Meta's documented Llama 3 prompt format: <|begin_of_text|>, then per message a header
# <|start_header_id|>ROLE<|end_header_id|>\n\n, the content and <|eot_id|>; a generation prompt is the
# assistant header. Written here from the format's description (content is not trimmed, as in Meta's
# ChatFormat).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

MISTRAL_FILES = {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}


def _need(module: str) -> None:
    pytest.importorskip(module, reason=f"the {module} package ships the reference tokenizer (pip install '.[test]')")


def _save_model_dir(name: str, fast, bos_id: int, eos_ids: list[int], pad_id: int | None) -> Path:
    from transformers import GenerationConfig, LlamaConfig

    out = Path(tempfile.mkdtemp(prefix=f"tunespec-{name}-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    fast.save_pretrained(out)
    import torch
    from transformers import LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32768,
                         bos_token_id=bos_id, eos_token_id=eos_ids[0], pad_token_id=pad_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)  # random weights (a few MB): enough to train and generate
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids, pad_token_id=pad_id).save_pretrained(out)
    return out


def llama3_tokenizer_file() -> Path:
    _need("llama_models")
    import llama_models.llama3

    return Path(llama_models.llama3.__file__).parent / "tokenizer.model"


@functools.lru_cache(maxsize=None)
def llama3_dir() -> Path:
    _need("tiktoken")
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = llama3_tokenizer_file()
    meta = MetaTokenizer(path)
    specials = sorted(meta.special_tokens, key=meta.special_tokens.get)
    tok = TikTokenConverter(vocab_file=str(path), pattern=MetaTokenizer.pat_str, extra_special_tokens=specials).converted()
    bos = meta.special_tokens["<|begin_of_text|>"]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", clean_up_tokenization_spaces=False)
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    assert len(fast) == meta.n_words
    return _save_model_dir("llama3", fast, bos, [meta.special_tokens["<|eot_id|>"], meta.eos_id], meta.pad_id)


def mistral_tokenizer_file(version: str) -> Path:
    _need("mistral_common")
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / MISTRAL_FILES[version]


@functools.lru_cache(maxsize=None)
def mistral_dir(version: str) -> Path:
    _need("sentencepiece")
    from mistral_common.integrations.chat_templates.chat_templates import convert_tokenizer_to_chat_template
    from tokenizers import AddedToken, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    path = mistral_tokenizer_file(version)
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(path.read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    control = [piece.piece for piece in proto.pieces if piece.type == 3]  # CONTROL: <s>, </s>, [INST], ...
    tok.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in control])
    bos, eos = vocab["<s>"], vocab["</s>"]
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = convert_tokenizer_to_chat_template(path)
    return _save_model_dir(f"mistral-{version}", fast, bos, [eos], None)


# --------------------------------------------------------------------------- the references


def reference_llama3(messages: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """Meta's ``ChatFormat`` on a conversation ending with an assistant turn: (ids, trained, prompt_ids).

    ``ids`` are ``<|begin_of_text|>`` and every message as ``ChatFormat.encode_message`` writes it;
    trained positions are each assistant message's content and its ``<|eot_id|>`` (not its header);
    ``prompt_ids`` are ``encode_dialog_prompt`` of the messages before the last (what generation sees)."""
    from llama_models.datatypes import RawMessage, StopReason, ToolPromptFormat
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    fmt = _llama3_format(MetaTokenizer, ChatFormat)
    raw = [RawMessage(role=m["role"], content=m["content"],
                      **({"stop_reason": StopReason.end_of_turn} if m["role"] == "assistant" else {})) for m in messages]
    ids = [fmt.tokenizer.special_tokens["<|begin_of_text|>"]]
    trained = [0]
    for message in raw:
        tokens, _ = fmt.encode_message(message, ToolPromptFormat.json)
        header = len(fmt._encode_header(message.role))
        ids += tokens
        trained += [0] * header + [int(message.role == "assistant")] * (len(tokens) - header)
    prompt = fmt.encode_dialog_prompt(raw[:-1]).tokens
    return ids, trained, prompt


@functools.lru_cache(maxsize=None)
def _llama3_format(MetaTokenizer, ChatFormat):
    return ChatFormat(MetaTokenizer(llama3_tokenizer_file()))


def reference_mistral(version: str, messages: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """mistral-common's ``encode_instruct`` on a conversation ending with an assistant turn:
    (ids, trained, prompt_ids). Trained positions are each assistant turn's tokens and its EOS: the tokens
    that follow ``[/INST]`` up to and including ``</s>``. ``prompt_ids`` are ``encode_instruct`` of the
    messages before the last."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest

    classes = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    instruct = _mistral(version).instruct_tokenizer

    def encode(msgs):
        # mistral-common takes the system prompt apart from the messages (it goes into the last user turn)
        system = "\n\n".join(m["content"] for m in msgs if m["role"] == "system") or None
        turns = [classes[m["role"]](content=m["content"]) for m in msgs if m["role"] != "system"]
        return instruct.encode_instruct(InstructRequest(messages=turns, system_prompt=system)).tokens

    ids = encode(messages)
    end_inst = instruct.tokenizer.encode("[/INST]", bos=False, eos=False) if version == "v1" else [
        instruct.tokenizer.get_control_token("[/INST]")]
    eos = instruct.tokenizer.eos_id
    trained, inside, i = [0] * len(ids), False, 0
    while i < len(ids):
        if ids[i:i + len(end_inst)] == end_inst:
            i += len(end_inst)
            inside = True
            continue
        if inside:
            trained[i] = 1
            inside = ids[i] != eos
        i += 1
    return ids, trained, encode(messages[:-1])


@functools.lru_cache(maxsize=None)
def _mistral(version: str):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(mistral_tokenizer_file(version)))
