"""Writing a loaded Hugging Face causal LM (or a LoRA adapter of one) as a GGUF file, with the ``gguf`` package.

What llama.cpp reads is written here: the architecture's hyperparameters, each weight under its GGUF name (Llama's
query and key rows reordered for llama.cpp's rotary layout, as transformers undoes on loading), the byte-level BPE
tokenizer (tokens, types, merges, pre-tokenizer name), the chat template, and the end-of-sequence and end-of-turn
token ids. Quantization to f32/f16/bf16/q8_0/q4_0/q4_1 is the ``gguf`` package's own (``gguf.quants``); K-quants
are ``llama-quantize``'s (``tunery.models.export``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.errors import ModelError

# quant name → (tensor type of 2-D weights, tensor type of the token embedding, llama.cpp file type)
PYTHON_QUANTS = {
    "f32": ("F32", "F32", "ALL_F32"),
    "f16": ("F16", "F16", "MOSTLY_F16"),
    "bf16": ("BF16", "BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "Q8_0", "MOSTLY_Q4_0"),  # the embedding (and tied output) stays 8-bit, as llama.cpp's q4 does
    "q4_1": ("Q4_1", "Q8_0", "MOSTLY_Q4_1"),
}


@dataclass(frozen=True)
class Family:
    """How one Hugging Face architecture maps onto a llama.cpp one."""

    arch: str  # gguf.MODEL_ARCH member name
    name: str  # general.architecture
    permute_qk: bool  # llama.cpp's llama graph wants rotary pairs interleaved per head
    norm_plus_one: bool = False  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w


FAMILIES = {
    "LlamaForCausalLM": Family("LLAMA", "llama", True),
    "MistralForCausalLM": Family("LLAMA", "llama", True),  # llama.cpp runs Mistral as llama
    "Qwen2ForCausalLM": Family("QWEN2", "qwen2", False),
    "Gemma3ForCausalLM": Family("GEMMA3", "gemma3", False, norm_plus_one=True),  # the text-only Gemma 3 models
}

# A tokenizer's pre-tokenization (its tokenizer.json ``pre_tokenizer``, reduced to a key) → llama.cpp's name for it.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    ("ByteLevel",): "gpt-2",  # llama.cpp spells it with a hyphen; "gpt2" fails its vocabulary load
    ("Digits", "ByteLevel"): "smollm",
    ("Split:" + LLAMA3_SPLIT, "ByteLevel"): "llama-bpe",
    ("Split:" + QWEN2_SPLIT, "ByteLevel"): "qwen2",
}


def family(config: Any) -> Family:
    """The family of a model ``config``; a ModelError naming the ones known for any other."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in FAMILIES:
            return FAMILIES[name]
    known = ", ".join(sorted(FAMILIES))
    raise ModelError(f"GGUF export knows the architectures {known}; this model is {', '.join(names) or 'unnamed'}")


def permute(weight: Any, heads: int) -> Any:
    """Rows of a query or key projection from Hugging Face's rotary layout (halves) to llama.cpp's (pairs)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def gguf_name(fam: Family, blocks: int, hf_name: str) -> str:
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, fam.arch), blocks)
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ModelError(f"GGUF export: no llama.cpp name for the weight {hf_name!r}")
    return name


def gguf_weights(model: Any, fam: Family) -> Iterator[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for each weight of ``model`` (the tied output head once, as the embedding)."""
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if "rotary_emb" in hf_name:
            continue
        data = tensor.detach().float().cpu().numpy()
        if fam.norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + 1.0
        if fam.permute_qk and hf_name.endswith("q_proj.weight"):
            data = permute(data, config.num_attention_heads)
        elif fam.permute_qk and hf_name.endswith("k_proj.weight"):
            data = permute(data, config.num_key_value_heads)
        yield gguf_name(fam, config.num_hidden_layers, hf_name), data


def rope(config: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The rotary settings of full attention and (Gemma 3) of sliding-window attention, however the config keeps
    them (``rope_theta`` + ``rope_scaling``, or transformers 5's ``rope_parameters``, per layer type or not)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "full_attention" in params:
        return dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    full = {**(getattr(config, "rope_scaling", None) or {}), **params}
    if getattr(config, "rope_theta", None) is not None:
        full.setdefault("rope_theta", config.rope_theta)
    return full, None


def write_rope(writer: Any, config: Any) -> None:
    import gguf

    full, sliding = rope(config)
    writer.add_rope_freq_base(float(full.get("rope_theta", 10000.0)))
    kind = full.get("rope_type") or full.get("type") or "default"
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    elif kind != "default":
        raise ModelError(f"GGUF export: rope scaling {kind!r} is not written yet (unscaled or linear only)")
    if sliding:
        writer.add_rope_freq_base_swa(float(sliding.get("rope_theta", 10000.0)))


def write_hyperparameters(writer: Any, config: Any, context_length: int, fam: Family) -> None:
    writer.add_context_length(int(context_length))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_rope_dimension_count(head_dim(config))
    write_rope(writer, config)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    if fam.name == "gemma3" or head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    if fam.name == "gemma3":
        check_gemma3(config)
        writer.add_sliding_window(int(config.sliding_window))


def check_gemma3(config: Any) -> None:
    """What llama.cpp's Gemma 3 graph assumes: attention scaled by the head size, every sixth layer global."""
    if int(getattr(config, "query_pre_attn_scalar", head_dim(config))) != head_dim(config):
        raise ModelError(
            "GGUF export: llama.cpp scales Gemma 3 attention by the head size; this model's query_pre_attn_scalar "
            f"is {config.query_pre_attn_scalar}, its head size {head_dim(config)}"
        )
    types = list(getattr(config, "layer_types", None) or [])
    expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(len(types))]
    if types and types != expected:
        raise ModelError("GGUF export: llama.cpp's Gemma 3 has a global attention layer every sixth; this model's "
                         "layer types differ")  # fmt: skip
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(config, cap, None):
            raise ModelError(f"GGUF export: Gemma 3 with {cap} is not written")


# --- the tokenizer ---------------------------------------------------------------------------------------------


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization, or a ModelError saying what it is."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ModelError(
            "GGUF export writes byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2); this one is "
            f"{model.get('type')}{' with byte fallback (SentencePiece-style)' if model.get('byte_fallback') else ''}"
        )
    key = _pre_key(spec.get("pre_tokenizer"))
    if key not in PRE_TOKENIZERS:
        raise ModelError(f"GGUF export: llama.cpp has no pre-tokenizer known to match this tokenizer's {key}")
    return PRE_TOKENIZERS[key]


def _pre_key(pre: dict[str, Any] | None) -> tuple[str, ...]:
    parts = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre] if pre else []
    key = []
    for part in parts or []:
        if part["type"] == "Split":
            key.append("Split:" + (part["pattern"].get("Regex") or part["pattern"].get("String", "")))
        elif part["type"] == "Digits":
            key.append("Digits")
        else:
            key.append(part["type"])
    return tuple(key)


def vocabulary(tokenizer: Any, size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id (padded to the model's ``size``), their llama.cpp token types, and the BPE merges."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        tokens.append(by_id[i])
        if i in added:
            special = added[i].get("special", False)
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, pre: str, end_of_turn: str | None) -> None:
    tokens, types, merges = vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    write_special_tokens(writer, tokenizer, end_of_turn)


TOKENIZER_ARRAYS = tuple(
    f"tokenizer.ggml.{key}" for key in ("model", "pre", "tokens", "scores", "token_type", "merges", "add_space_prefix")
)


def copy_tokenizer(writer: Any, source: Path, tokenizer: Any, vocab_size: int, end_of_turn: str | None) -> None:
    """The vocabulary of the GGUF a catalog base was converted from (a SentencePiece-style one, Gemma's), whose
    tokens tunery's tokenizer has by the same ids; special tokens and the template are tunery's."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    if len(tokens) != vocab_size or any(tokenizer.convert_ids_to_tokens(i) != tokens[i] for i in (0, 1, 2)):
        raise ModelError(f"GGUF export: the vocabulary of {source.name} is not this model's")
    for key in TOKENIZER_ARRAYS:
        field = reader.fields.get(key)
        if field is None:
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(key, field.contents())
        elif kind == gguf.GGUFValueType.BOOL:
            writer.add_bool(key, field.contents())
    write_special_tokens(writer, tokenizer, end_of_turn)


def write_special_tokens(writer: Any, tokenizer: Any, end_of_turn: str | None) -> None:
    for token, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id)):
        if getattr(tokenizer, f"{token}_token_id") is not None:
            add(int(getattr(tokenizer, f"{token}_token_id")))
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(int(tokenizer.pad_token_id))
    if end_of_turn is not None:
        writer.add_eot_token_id(int(tokenizer.convert_tokens_to_ids(end_of_turn)))
    # training tokenized the rendered template without adding special tokens: the template holds any BOS
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


# --- tensors ---------------------------------------------------------------------------------------------------


def encode(data: Any, qtype_name: str) -> tuple[Any, Any]:
    """A float32 array in the GGUF tensor type ``qtype_name``: (bytes as numpy, the type)."""
    import gguf
    import numpy as np

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32), qtype
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:  # rows that do not fill whole blocks stay f16, as llama.cpp does
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def tensor_type(name: str, data: Any, quant: str) -> str:
    weights, embedding, _ = PYTHON_QUANTS[quant]
    if data.ndim == 1:
        return "F32"  # norms and biases
    return embedding if name.startswith(("token_embd", "output.")) else weights


def write_file(
    path: Path,
    arch: str,
    metadata: Callable[[Any], None],
    tensors: Iterable[tuple[str, Any, str]],
    on_tensor: Callable[[int], None] = lambda n: None,
) -> None:
    """One GGUF file: ``metadata(writer)`` adds the key-values; ``tensors`` are (name, float32 array, type name)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    try:
        metadata(writer)
        for n, (name, data, qtype_name) in enumerate(tensors):
            raw, qtype = encode(data, qtype_name)
            writer.add_tensor(name, raw, raw_dtype=qtype)
            on_tensor(n + 1)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()


def file_type(quant: str) -> int:
    import gguf

    return int(getattr(gguf.LlamaFileType, PYTHON_QUANTS[quant][2]))


# --- a LoRA adapter --------------------------------------------------------------------------------------------


def adapter_tensors(state: dict[str, Any], config: Any, fam: Family) -> Iterator[tuple[str, Any]]:
    """(``blk.N.attn_q.weight.lora_a`` style name, float32 array) for each PEFT LoRA weight; the B matrices of query
    and key projections get the rows of the base weight's llama.cpp layout, so B·A is the permuted update."""
    for key, tensor in sorted(state.items()):
        if ".lora_A." not in key and ".lora_B." not in key:
            raise ModelError(f"GGUF adapter export: {key!r} is not a LoRA matrix (an adapter with saved modules)")
        base = key.replace("base_model.model.", "", 1).replace(".lora_A", "").replace(".lora_B", "")
        data = tensor.detach().float().cpu().numpy()
        is_b = ".lora_B." in key
        if fam.permute_qk and is_b and base.endswith("q_proj.weight"):
            data = permute(data, config.num_attention_heads)
        elif fam.permute_qk and is_b and base.endswith("k_proj.weight"):
            data = permute(data, config.num_key_value_heads)
        if base.endswith(("embed_tokens.weight", "lm_head.weight")):
            raise ModelError(f"GGUF adapter export: {key!r} adapts the embedding or output head, which llama.cpp's "
                             "adapters do not take; export the merged model instead")  # fmt: skip
        yield gguf_name(fam, config.num_hidden_layers, base) + (".lora_b" if is_b else ".lora_a"), data
