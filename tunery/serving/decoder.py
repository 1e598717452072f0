"""A lean decode forward for llama-family models (Llama, SmolLM2, Qwen2, Mistral without a sliding window).

At batch 1 on a CPU, a 135M model's step is mostly the cost of calling its operations, not of computing them.
``transformers``' forward builds attention masks and cache objects each step and calls q, k, v, gate and up
as separate ``Linear`` modules. ``Decoder`` runs the same computation with fewer operations: q, k and v are
one matrix product, gate and up another, the rotary table is computed once per model, the KV cache is a
buffer written in place (``KV``), a decode step's query heads that share a KV head attend as one group (no
repeated keys), and the weight kernels are called directly on 2-D activations. It holds the weights that
``tunery.serving.quantized.prepare_weights`` made (int4, int8, bf16; or fp32, where it equals ``transformers``
to float rounding, tested), and the LoRA adapters of the base's slots as stacks per fused layer
(``LoraStack``), so a batch that mixes adapters makes two small products per fused layer.

    fuse(model)                          # in fp32, before prepare_weights: q|k|v and gate|up as one layer each
    prepare_weights(model, "int4")
    decoder = Decoder(model, slots=9)
    logits = decoder.forward(ids, mask, positions, cache, slots)   # the last position's logits, cache updated

``Base`` (engine.py) uses it for every weight form but fp32, which stays ``transformers``' reference path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunery.serving.quantized import GROUP, Int4Linear, Int8Linear, int8_kernel_works

FAMILIES = ("llama", "qwen2", "mistral")
INT8_K = 16  # torch._weight_int8pack_mm's inner dimension must be a multiple of this (other widths crash)
_CHUNK = 256  # cache columns added at a time


def unsupported(model: Any) -> str | None:
    """Why ``model`` cannot run on ``Decoder`` (it then runs on ``transformers``' forward), or None."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return f"model type {kind!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "use_sliding_window", False) or (kind == "mistral" and getattr(config, "sliding_window", None)):
        return "a sliding attention window"
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") in ("dynamic", "longrope"):
        return "rotary embeddings that depend on the sequence length"
    if getattr(config, "mlp_bias", False):
        return "biases in the MLP"
    return None


# --- fusing q|k|v and gate|up ------------------------------------------------------------------------------


class Part(nn.Module):
    """One projection of a fused layer, for code that still calls it by its old name (the HF forward):
    the fused layer's output columns ``start:end``. Holds no weights (the fused layer is found on ``owner``)."""

    def __init__(self, owner: nn.Module, fused: str, start: int, end: int) -> None:
        super().__init__()
        self.__dict__["owner"] = owner  # not a submodule: the owner holds us
        self.fused, self.start, self.end = fused, start, end
        self.out_features = end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.owner, self.fused)(x)[..., self.start : self.end]


def _fuse(owner: nn.Module, names: list[str], fused: str) -> None:
    parts = [getattr(owner, n) for n in names]
    weight = torch.cat([p.weight.detach() for p in parts])
    biases = [p.bias for p in parts]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=biases[0] is not None, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        layer.bias = nn.Parameter(torch.cat([b.detach() for b in biases if b is not None]), requires_grad=False)
    setattr(owner, fused, layer)
    start = 0
    for name, part in zip(names, parts, strict=True):
        setattr(owner, name, Part(owner, fused, start, start + part.out_features))
        start += part.out_features
    owner.__dict__.setdefault("fused_parts", {})[fused] = [(n, p.out_features) for n, p in zip(names, parts)]


def fuse(model: nn.Module) -> None:
    """Make each layer's q, k, v projections one linear layer (``qkv_proj``) and gate, up one (``gate_up_proj``),
    the old names left as ``Part`` views of them. Run on fp32 weights, before ``prepare_weights``."""
    for layer in model.model.layers:
        _fuse(layer.self_attn, ["q_proj", "k_proj", "v_proj"], "qkv_proj")
        _fuse(layer.mlp, ["gate_proj", "up_proj"], "gate_up_proj")


# --- the weight kernels, called directly ---------------------------------------------------------------------


def kernel(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x`` [rows, in] (contiguous, in the model's activation dtype) → [rows, out], without the module call."""

    bias = getattr(layer, "bias", None)
    if isinstance(layer, Int4Linear):
        p0, s0 = layer.packed0, layer.scales0
        if layer.halves == 2:
            p1, s1 = layer.packed1, layer.scales1
            mm: Callable[[torch.Tensor], torch.Tensor] = lambda x: torch._weight_int4pack_mm_for_cpu(  # noqa: E731
                x, p0, GROUP, s0
            ).add_(torch._weight_int4pack_mm_for_cpu(x, p1, GROUP, s1))
        else:
            mm = lambda x: torch._weight_int4pack_mm_for_cpu(x, p0, GROUP, s0)  # noqa: E731
    elif isinstance(layer, Int8Linear):
        w, s = layer.weight, layer.scale
        mm = lambda x: torch._weight_int8pack_mm(x, w, s)  # noqa: E731
    elif isinstance(layer, nn.Linear):
        w = layer.weight
        return lambda x: F.linear(x, w, bias)
    else:
        raise TypeError(f"no kernel for a {type(layer).__name__}")
    if bias is None:
        return mm
    return lambda x: mm(x).add_(bias)


# --- the KV cache --------------------------------------------------------------------------------------------


class KV:
    """One layer's keys and values [rows, kv_heads, length, head_dim], in buffers with room to grow (written in
    place). ``keys``/``values`` read and replace them as ``transformers``' cache layers do (``Batch`` merges and
    trims rows through them, one after the other)."""

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._kn = self._vn = 0  # the columns in use

    @property
    def length(self) -> int:
        return self._kn

    @property
    def keys(self) -> torch.Tensor:
        assert self._k is not None
        return self._k[:, :, : self._kn]

    @keys.setter
    def keys(self, t: torch.Tensor) -> None:
        self._k, self._kn = t, t.shape[2]

    @property
    def values(self) -> torch.Tensor:
        assert self._v is not None
        return self._v[:, :, : self._vn]

    @values.setter
    def values(self, t: torch.Tensor) -> None:
        self._v, self._vn = t, t.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``k``, ``v`` [rows, kv_heads, n, head_dim] after the last column; all keys and values so far."""
        self._k, self._kn = _append(self._k, self._kn, k)
        self._v, self._vn = _append(self._v, self._vn, v)
        return self._k[:, :, : self._kn], self._v[:, :, : self._vn]


def _append(buffer: torch.Tensor | None, used: int, new: torch.Tensor) -> tuple[torch.Tensor, int]:
    n = new.shape[2]
    if buffer is None or buffer.shape[2] - used < n:  # a buffer with room for this and _CHUNK more columns
        grown = new.new_empty(new.shape[0], new.shape[1], used + n + _CHUNK, new.shape[3])
        if buffer is not None and used:
            grown[:, :, :used] = buffer[:, :, :used]
        buffer = grown
    buffer[:, :, used : used + n] = new
    return buffer, used + n


class Cache:
    """A ``KV`` per layer."""

    def __init__(self, layers: int) -> None:
        self.layers = [KV() for _ in range(layers)]


# --- LoRA stacks per fused layer ---------------------------------------------------------------------------


class LoraStack:
    """The LoRA deltas of every adapter slot on one (fused) layer of ``parts`` (name, output width).

    Per adapter (slot 0, the base, has none) and part, A [rank, in] and B [rank, out] with B nonzero only in
    the part's output columns; stacked as A [in, parts * adapters * rank] and B [parts * adapters * rank, out].
    ``x @ A``, masked to each row's own slot, ``@ B`` is every row's delta in two products however many
    adapters the batch mixes (punica's BGMV as two GEMMs); rows of one adapter read only its matrices
    (``add_one``). fp32, or with ``quantized`` (bf16 activations) int8 with a scale per output column: the
    products are few but many rows of tiny matrices, and int8 reads a quarter of fp32's bytes."""

    def __init__(self, slots: int, parts: list[tuple[str, int]], in_features: int, quantized: bool = False) -> None:
        self.adapters, self.parts, self.in_features = slots - 1, parts, in_features
        self.out_features = sum(width for _, width in parts)
        self.quantized = quantized
        self.names = [name for name, _ in parts]
        self.columns = {}
        start = 0
        for name, width in parts:
            self.columns[name] = (start, start + width)
            start += width
        self.rank = 0
        self.A = torch.zeros(self.adapters, len(parts), 0, in_features)  # [adapter, part, rank, in]
        self.B = torch.zeros(self.adapters, len(parts), 0, self.out_features)  # [adapter, part, rank, out]
        self._flat: tuple[Any, Any] | None = None

    def set(self, slot: int, part: str, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        index, rank = self.names.index(part), (0 if a is None else a.shape[0])
        if rank > self.rank:  # pad every slot to the largest rank
            grow = rank - self.rank
            self.A = torch.cat([self.A, self.A.new_zeros(self.adapters, len(self.parts), grow, self.in_features)], 2)
            self.B = torch.cat([self.B, self.B.new_zeros(self.adapters, len(self.parts), grow, self.out_features)], 2)
            self.rank = rank
        self.A[slot - 1, index].zero_()
        self.B[slot - 1, index].zero_()
        if a is not None and b is not None:
            start, end = self.columns[part]
            self.A[slot - 1, index, :rank] = a.float()
            self.B[slot - 1, index, :rank, start:end] = b.float().T
        self._flat = None

    def clear(self, slot: int) -> None:
        self.A[slot - 1].zero_()
        self.B[slot - 1].zero_()
        self._flat = None

    def flat(self) -> tuple[Any, Any]:
        """A as [in, adapters * parts * rank] and B as [adapters * parts * rank, out] (fp32); or, with
        ``quantized``, each int8 with a scale per output column (for ``torch._weight_int8pack_mm``)."""
        if self._flat is None:
            a = self.A.reshape(-1, self.in_features).T.contiguous()
            b = self.B.reshape(-1, self.out_features).contiguous()
            if self.quantized:  # B's rows scaled to one size (the factor moved into A's columns), then int8
                size = b.abs().amax(dim=1).clamp(min=1e-12)
                a, b = a * size, b / size[:, None]
                pad = -a.shape[1] % INT8_K  # the kernel's inner dimension: zero columns (and rows of B) to fill it
                a, b = F.pad(a, (0, pad)), F.pad(b, (0, 0, 0, pad))
                self._flat = (_int8(a.T), _int8(b.T))
            else:
                self._flat = (a, b)
        return self._flat

    def mask(self, slots: torch.Tensor) -> torch.Tensor:
        """[rows, adapters * parts * rank]: 1 in the columns of each row's slot."""
        owner = torch.arange(1, self.adapters + 1).repeat_interleave(len(self.parts) * self.rank)
        if self.quantized:
            owner = F.pad(owner, (0, -len(owner) % INT8_K))  # the padding columns belong to slot 0: always 0
        return (owner[None, :] == slots[:, None]).to(torch.bfloat16 if self.quantized else torch.float32)

    def add_one(self, x: torch.Tensor, out: torch.Tensor, slot: int) -> torch.Tensor:
        """``out`` plus one slot's delta for every row of ``x`` (a prefill, or rows all of one adapter)."""
        a = self.A[slot - 1].reshape(-1, self.in_features)  # [parts * rank, in]
        b = self.B[slot - 1].reshape(-1, self.out_features)
        return out.add_(torch.matmul(torch.matmul(x.float(), a.T), b))

    def add(self, x: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``out`` [rows, out] plus each row's delta for ``x`` [rows, in] (``mask`` from ``mask``, per row)."""
        a, b = self.flat()
        if self.quantized:
            return out.add_(_int8_mm(_int8_mm(x, a).mul_(mask), b))
        return out.add_(torch.matmul(torch.matmul(x.float(), a).mul_(mask), b))


def _int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` [out, in] as int8 with one bf16 scale per output row (symmetric, round to nearest)."""
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous(), scale.to(torch.bfloat16)


def _int8_mm(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch._weight_int8pack_mm(x, w[0], w[1])


# --- the forward -------------------------------------------------------------------------------------------


class _Layer:
    def __init__(self, layer: nn.Module, slots: int, quantized: bool) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm = layer.input_layernorm.weight
        self.post_norm = layer.post_attention_layernorm.weight
        self.eps = layer.input_layernorm.variance_epsilon
        self.qkv, self.o = kernel(attention.qkv_proj), kernel(attention.o_proj)
        self.gate_up, self.down = kernel(mlp.gate_up_proj), kernel(mlp.down_proj)
        self.scaling = float(attention.scaling)
        qkv_parts = attention.__dict__["fused_parts"]["qkv_proj"]
        gate_up_parts = mlp.__dict__["fused_parts"]["gate_up_proj"]
        self.inter = gate_up_parts[0][1]
        hidden = attention.o_proj.in_features
        self.lora = {
            "qkv": LoraStack(slots, qkv_parts, layer.input_layernorm.weight.shape[0], quantized),
            "o": LoraStack(slots, [("o_proj", attention.o_proj.out_features)], hidden, quantized),
            "gate_up": LoraStack(slots, gate_up_parts, layer.post_attention_layernorm.weight.shape[0], quantized),
            "down": LoraStack(slots, [("down_proj", mlp.down_proj.out_features)], mlp.down_proj.in_features, quantized),
        }


_TARGETS = {
    "self_attn.q_proj": "qkv",
    "self_attn.k_proj": "qkv",
    "self_attn.v_proj": "qkv",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "gate_up",
    "mlp.up_proj": "gate_up",
    "mlp.down_proj": "down",
}


class Decoder:
    """The forward of a fused (``fuse``) llama-family model whose weights ``prepare_weights`` made."""

    def __init__(self, model: nn.Module, slots: int) -> None:
        config = model.config
        core = model.model
        self.dtype = core.embed_tokens.weight.dtype
        self.embed = core.embed_tokens.weight
        self.norm, self.eps = core.norm.weight, core.norm.variance_epsilon
        self.head = kernel(model.lm_head)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        # bf16 activations (int4, int8, bf16 weights): the adapters' stacks as int8 too, where the kernel runs;
        # fp32: the stacks in fp32, the exact sum
        quantized = self.dtype == torch.bfloat16 and int8_kernel_works()
        self.layers = [_Layer(layer, slots, quantized) for layer in core.layers]
        self.slots = slots
        length = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        positions = torch.arange(length)[None]
        probe = torch.zeros(1, dtype=self.dtype)
        cos, sin = core.rotary_emb(probe, positions)  # [1, length, head_dim], in the activations' dtype
        self.cos, self.sin = cos[0], sin[0]

    def new_cache(self) -> Cache:
        return Cache(len(self.layers))

    # adapters

    def target(self, name: str) -> tuple[LoraStack, str] | None:
        """The stack and part for an adapter's module name (``model.layers.3.self_attn.q_proj``), or None."""
        head, _, rest = name.partition(".layers.")
        index, _, module = rest.partition(".")
        if not index.isdigit() or module not in _TARGETS or int(index) >= len(self.layers):
            return None
        return self.layers[int(index)].lora[_TARGETS[module]], module.rpartition(".")[2]

    def clear(self, slot: int) -> None:
        for layer in self.layers:
            for stack in layer.lora.values():
                stack.clear(slot)

    # the forward

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor,
        cache: Cache | None,
        slots: torch.Tensor | None,
        every_position: bool = False,
    ) -> torch.Tensor:
        """Logits (fp32) of the last position [rows, vocab], or of every position [rows, length, vocab].

        ``ids`` [rows, n]; ``mask`` [rows, width]: 1 where the cache, after this step, holds a real token (None:
        no padding); ``positions`` [rows, n]; ``slots`` [rows]: each row's adapter slot (None: all the base).
        With n > 1 the rows must be unpadded and of one length (a prefill): attention is causal, each position
        also seeing every position already in the cache (a shared prefix computed before)."""
        rows, n = ids.shape
        past = cache.layers[0].length if cache is not None else 0
        if n > 1 and past and mask is not None and not bool(mask.all()):
            raise ValueError("a prefill after cached positions goes in unpadded")
        causal = torch.ones(n, past + n, dtype=torch.bool).tril(past) if n > 1 and past else None
        x = F.embedding(ids.reshape(-1), self.embed)  # [rows * n, hidden]
        cos = self.cos[positions].reshape(rows, n, 1, self.head_dim)
        sin = self.sin[positions].reshape(rows, n, 1, self.head_dim)
        attend = None
        if n == 1 and mask is not None and not bool(mask.all()):
            attend = mask.bool()[:, None, None, :]
        rows_lora = _Rows(slots, n) if slots is not None and bool((slots > 0).any()) else None
        lora = rows_lora is not None
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        half = self.head_dim // 2
        for index, layer in enumerate(self.layers):
            h = F.rms_norm(x, (x.shape[-1],), layer.input_norm, layer.eps)
            qkv = layer.qkv(h)
            if lora:
                qkv = self._lora(layer.lora["qkv"], h, qkv, rows_lora)
            qk = qkv[:, : q_width + kv_width].reshape(rows, n, self.heads + self.kv_heads, self.head_dim)
            rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
            qk = qk * cos + rotated * sin
            q = qk[:, :, : self.heads].transpose(1, 2)
            k = qk[:, :, self.heads :].transpose(1, 2)
            v = qkv[:, q_width + kv_width :].reshape(rows, n, self.kv_heads, self.head_dim).transpose(1, 2)
            if cache is not None:
                k, v = cache.layers[index].append(k, v)
            if n == 1:  # the query heads that share a KV head attend as one group of queries (no repeat)
                q = q.reshape(rows, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=layer.scaling)
            else:
                out = F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=causal,
                    is_causal=causal is None,
                    scale=layer.scaling,
                    enable_gqa=self.kv_heads != self.heads,
                ).transpose(1, 2)
            out = out.reshape(rows * n, q_width)
            attn = layer.o(out)
            if lora:
                attn = self._lora(layer.lora["o"], out, attn, rows_lora)
            x = x + attn
            h = F.rms_norm(x, (x.shape[-1],), layer.post_norm, layer.eps)
            gate_up = layer.gate_up(h)
            if lora:
                gate_up = self._lora(layer.lora["gate_up"], h, gate_up, rows_lora)
            act = F.silu(gate_up[:, : layer.inter]) * gate_up[:, layer.inter :]
            down = layer.down(act)
            if lora:
                down = self._lora(layer.lora["down"], act, down, rows_lora)
            x = x + down
        if not every_position:
            x = x.reshape(rows, n, -1)[:, -1]
        x = F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)
        logits = self.head(x.contiguous()).float()
        return logits if not every_position else logits.reshape(rows, n, -1)

    @staticmethod
    def _lora(stack: LoraStack, x: torch.Tensor, out: torch.Tensor, rows: _Rows | None) -> torch.Tensor:
        if rows is None or stack.rank == 0:  # no adapter in this forward, or none targets this layer
            return out
        if rows.one is not None:  # every row on one adapter: only its matrices are read
            return stack.add_one(x, out, rows.one)
        key = (len(stack.parts), stack.rank)  # stacks of one shape share their row mask
        mask = rows.masks.get(key)
        if mask is None:
            mask = rows.masks[key] = stack.mask(rows.slots).repeat_interleave(rows.n, dim=0)
        return stack.add(x, out, mask)


class _Rows:
    """One forward's adapter rows: each row's slot, the positions per row, the one slot they all share (or
    None), and the row masks made so far (per stack shape)."""

    def __init__(self, slots: torch.Tensor, n: int) -> None:
        self.slots, self.n = slots, n
        self.one = int(slots[0]) if bool((slots == slots[0]).all()) else None
        self.masks: dict[tuple[int, int], torch.Tensor] = {}
