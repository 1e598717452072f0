"""Inference: each base model loaded once, LoRA adapters attached per row, and a decode loop that batches
continuously.

    engine = Engine("smollm2-135m-instruct")              # one model, alone (the CLI, SDK, evaluation)
    engine.generate(example, GenerationConfig(max_output_tokens=32))

    models = Models(max_bases=2, max_adapters=8, weights="auto")   # the model host: many models at once
    served = models.get(path)                                       # a base, a tuned adapter or a full model
    batch = Batch(served.base); batch.add(Row(served, ids, config)); batch.step() ...

**One base, many adapters.** A tuned LoRA model is its base plus a slot in the base's adapter stacks:
every targeted linear layer holds the A and B matrices of all loaded adapters stacked (ranks padded,
scaling folded into B), and each batch row picks its slot (slot 0 is the base, all zeros), so one forward
serves rows of different adapters and of the base itself (two small products per layer, masked to each
row's slot, as punica's BGMV; on the lean decoder the stacks are per fused layer, and int8 beside bf16
activations). Answers equal the merged model's (greedy, fp32; tested). An adapter this cannot stack (DoRA,
``modules_to_save``, per-module ranks) is served as a separate, merged model.

**Continuous batching.** A ``Batch`` holds rows that decode together with one KV cache, left-padded to one
width. ``add`` prefills a new row alone and merges its cache into the running one (the shorter side
padded on the left), so it joins at the next step; a finished row leaves at once. Each row has its own
sampling settings and ``torch.Generator``, stop tokens, stop sequences, optional constraint (see
``tunery.serving.constrain``: ``mask``/``advance``/``is_finished``) and stream callback, so it gets the
answer it gets alone (greedy) or the same distribution (sampled).

**Shared prefixes.** Each base keeps the keys and values of recent prompts per adapter slot
(``tunery.serving.prefix``, ``$TUNERY_SERVING_PREFIX_CACHE_MIB``): a new row's prefill starts after the longest
start it shares with one of them (a system instruction, few-shot turns, one prompt over a whole evaluation or
batch file), with the logits a whole prefill gives (fp32, tested).

**Weights.** ``fp32`` is the reference (what ``transformers`` computes); ``bf16``, ``int8`` and ``int4`` are held
as ``tunery.serving.quantized`` makes them (``auto``: the fastest form this machine runs). The model host holds
``served_weights()`` (``$TUNERY_SERVING_WEIGHTS``, default ``auto``); the evaluation, the SDK's in-process model
and ``tunery predict`` load that same form by default and name it (``Engine.weights``).

**The forward.** A llama-family model (Llama, SmolLM2, Qwen2, Mistral without a sliding window) runs on
``tunery.serving.decoder`` in every form: the same computation as ``transformers``' forward with fused q|k|v and
gate|up layers, a KV cache written in place and the weight kernels called directly (equal to ``transformers`` in
fp32, tested; 1.24x the decode rate of its ``generate`` at batch 1 in fp32 on an AVX2 CPU). Other families keep
``transformers``' forward in every form (``Base(lean=False)`` is that path for any model).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunery.data.formats import Example
from tunery.data.tokenize import end_of_turn_token, prompt_ids
from tunery.errors import ModelError
from tunery.models.loading import load_model, load_tokenizer
from tunery.models.sources import resolve_base
from tunery.models.tuned import base_path, is_adapter, is_tuned_dir, read_manifest
from tunery.serving.gemini import Generation, GenerationConfig, TokenLogprob
from tunery.serving.prefix import Prefixes
from tunery.serving.quantized import Int4Linear, Int8Linear, prepare_weights, replace_module, resolve_weights
from tunery.settings import serving_prefix_cache_bytes

BASE_SLOT = "__base__"


# --- many LoRA adapters on one base ------------------------------------------------------------------------


class _Selection:
    """Which adapter slot each row of the running forward uses (None: every row is the base's), and per stack
    width the row mask that keeps each row's own slot (made once per forward, shared by the layers)."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None
        self.masks: dict[int, torch.Tensor] = {}

    def mask(self, slots: int, rank: int) -> torch.Tensor:
        """[rows, slots * rank]: 1 in the columns of each row's slot, else 0."""
        found = self.masks.get(rank)
        if found is None:
            assert self.rows is not None
            owner = torch.arange(slots).repeat_interleave(rank)
            found = self.masks[rank] = (owner[None, :] == self.rows[:, None]).float()
        return found

    def select(self, rows: torch.Tensor | None) -> None:
        self.rows, self.masks = rows, {}


class MultiLoraLinear(nn.Module):
    """A base linear layer plus the LoRA deltas of every loaded adapter, one slot each, chosen per row.

    The slots' A matrices are stacked as one [slots * rank, in] matrix and their (scaled) B matrices as one
    [slots * rank, out], in fp32: ``x @ A.T``, masked to each row's own slot, ``@ B`` gives every row its own
    adapter's delta in two small matrix products, however many adapters the batch mixes (punica's BGMV as two
    GEMMs; the stacks are small: rank times slots).
    """

    def __init__(self, base: nn.Module, selection: _Selection, slots: int) -> None:
        super().__init__()
        self.base, self.selection, self.slots = base, selection, slots
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = 0
        self.A = torch.zeros(slots, 0, self.in_features)  # [slot, rank, in]
        self.B = torch.zeros(slots, 0, self.out_features)  # [slot, rank, out], scaling folded in

    def set(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's ``a`` [r, in] and scaled ``b`` [out, r] in ``slot`` (None: zeros, this layer untouched)."""
        rank = 0 if a is None else a.shape[0]
        if rank > self.rank:  # pad every slot to the largest rank
            grow = rank - self.rank
            self.A = torch.cat([self.A, self.A.new_zeros(self.slots, grow, self.in_features)], dim=1)
            self.B = torch.cat([self.B, self.B.new_zeros(self.slots, grow, self.out_features)], dim=1)
            self.rank = rank
        self.A[slot].zero_()
        self.B[slot].zero_()
        if a is not None and b is not None:
            self.A[slot, :rank] = a.float()
            self.B[slot, :rank] = b.float().T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.selection.rows is None or self.rank == 0:
            return out
        mask = self.selection.mask(self.slots, self.rank)  # [batch, slots * rank]
        flat = x.reshape(x.shape[0], -1, self.in_features).float()
        low = torch.matmul(flat, self.A.reshape(-1, self.in_features).T) * mask[:, None, :]
        delta = torch.matmul(low, self.B.reshape(-1, self.out_features))
        return out + delta.reshape(out.shape).to(out.dtype)


@dataclass(frozen=True)
class AdapterWeights:
    """A PEFT LoRA adapter read from disk: per base module, its A [r, in] and scaled B [out, r]."""

    path: str
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def read(cls, tuned_dir: str | Path) -> AdapterWeights:
        from safetensors.torch import load_file

        config = json.loads((Path(tuned_dir) / "adapter_config.json").read_text())
        reason = unstackable(config)
        if reason:
            raise ModelError(f"{tuned_dir}: {reason}")
        rank, alpha = int(config["r"]), float(config.get("lora_alpha") or config["r"])
        scaling = alpha / (rank**0.5 if config.get("use_rslora") else rank)
        tensors = load_file(str(Path(tuned_dir) / "adapter_model.safetensors"))
        layers = {}
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = tensors[key.replace(".lora_A.weight", ".lora_B.weight")]
            layers[module] = (a.float(), b.float() * scaling)
        return cls(str(tuned_dir), layers)


def unstackable(config: dict[str, Any]) -> str | None:
    """Why a PEFT adapter config cannot share its base's stacks (it is then merged into a copy), or None."""
    if config.get("peft_type", "LORA") != "LORA":
        return f"a {config.get('peft_type')} adapter, not LoRA"
    for key, why in (
        ("use_dora", "uses DoRA"),
        ("modules_to_save", "saves whole modules"),
        ("rank_pattern", "has per-module ranks"),
        ("alpha_pattern", "has per-module alphas"),
    ):
        if config.get(key):
            return f"the adapter {why}"
    if config.get("bias", "none") != "none":
        return "the adapter trains biases"
    return None


# --- a loaded base and what is served on it ------------------------------------------------------------------


class Base:
    """One model's weights in memory and its adapter slots (``max_adapters`` of them, least recently used reused)."""

    def __init__(
        self,
        path: str | Path,
        weights: str = "fp32",
        max_adapters: int = 8,
        model: Any = None,
        lean: bool | None = None,
    ) -> None:
        from tunery.serving import decoder

        self.path, self.weights = str(path), resolve_weights(weights)
        model = load_model(path) if model is None else model
        reason = decoder.unsupported(model)
        if lean is None:  # the lean forward wherever it runs the model (in fp32 it equals transformers', tested)
            lean = reason is None
        elif lean and reason:
            raise ModelError(f"{path}: the lean decoder does not run this model: {reason}")
        if lean and self.weights == "fp32":  # copied out of the mapped file (its pages stay resident beside the
            with torch.no_grad():  # fused copies); every other form converts every weight anyway
                for parameter in model.parameters():
                    parameter.data = parameter.data.clone()
        if lean:
            decoder.fuse(model)
        self.dtype = prepare_weights(model, self.weights)
        self.model = model.eval()
        self.decoder = decoder.Decoder(model, max_adapters + 1) if lean else None
        self.config = model.config
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.selection = _Selection()
        self.max_adapters = max_adapters
        self.adapters: OrderedDict[str, int] = OrderedDict()  # tuned dir → slot, least recently used first
        self.in_use: dict[int, int] = {}  # slot → rows running with it
        self.lock = threading.RLock()  # held by whoever runs a forward or changes the slots
        self.prefixes = Prefixes(serving_prefix_cache_bytes())  # recent prompts' keys and values, per slot

    def slot(self, adapter: str) -> int | None:
        """The slot of a loaded adapter (marked recently used), else None."""
        if adapter in self.adapters:
            self.adapters.move_to_end(adapter)
            return self.adapters[adapter]
        return None

    def attach(self, adapter: AdapterWeights) -> int | None:
        """Load ``adapter`` into a free slot (dropping the least recently used idle one); None when every slot
        holds an adapter that rows are running with (the caller waits for one to finish)."""
        with self.lock:
            found = self.slot(adapter.path)
            if found is not None:
                return found
            used = set(self.adapters.values())
            free = next((s for s in range(1, self.max_adapters + 1) if s not in used), None)
            if free is None:
                idle = next((name for name, s in self.adapters.items() if not self.in_use.get(s)), None)
                if idle is None:
                    return None
                free = self.adapters.pop(idle)
            self._clear(free)
            for name, (a, b) in adapter.layers.items():
                self._set(name, free, a, b)
            self.adapters[adapter.path] = free
            return free

    def detach(self, adapter: str) -> bool:
        """Forget an adapter (its directory was deleted); whether it was loaded. Its rows must have left."""
        with self.lock:
            slot = self.adapters.pop(adapter, None)
            if slot is None:
                return False
            self._clear(slot)
            return True

    def _clear(self, slot: int) -> None:
        self.prefixes.drop(slot)
        if self.decoder is not None:
            self.decoder.clear(slot)
        for module in self.model.modules():
            if isinstance(module, MultiLoraLinear):
                module.set(slot, None, None)

    def _set(self, name: str, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.decoder is None:
            self._lora_module(name).set(slot, a, b)
            return
        found = self.decoder.target(name)
        if found is None:
            raise ModelError(f"the adapter targets {name!r}, which the lean decoder of {self.path} does not stack")
        stack, part = found
        stack.set(slot, part, a, b)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return self.decoder.new_cache() if self.decoder is not None else DynamicCache()

    def start(self, ids: list[int], slot: int) -> Prefill:
        """A prompt's prefill, begun: its cache holds the longest start a kept prompt of the slot shares with it
        (``tunery.serving.prefix``: those tokens are not computed again); ``extend`` computes the rest."""
        cache = self.new_cache()
        with self.lock:
            done, past = self.prefixes.longest(slot, ids)
            for index, (k, v) in enumerate(past):
                if self.decoder is not None:
                    cache.layers[index].keys, cache.layers[index].values = k, v  # copied as the prompt is appended
                else:
                    cache.update(k, v, index)  # concatenated onto an empty layer: a copy
        return Prefill(ids, slot, cache, done)

    def extend(self, fill: Prefill, chunk: int | None = None) -> torch.Tensor | None:
        """Compute the next ``chunk`` positions of a prefill (None: all that are left): the last position's logits
        [1, vocab] once the whole prompt is in (it is then kept for the prompts after it), else None."""
        n = len(fill.ids)
        end = n if chunk is None else min(n, fill.done + chunk)
        with self.lock:
            logits = self.forward(
                torch.tensor([fill.ids[fill.done : end]]),
                torch.ones(1, end, dtype=torch.long),
                torch.arange(fill.done, end)[None],
                fill.cache,
                torch.tensor([fill.slot]),
            )
            fill.done = end
            if end < n:
                return None
            self.prefixes.keep(fill.slot, fill.ids, [(layer.keys, layer.values) for layer in fill.cache.layers])
        return logits

    def _lora_module(self, name: str) -> MultiLoraLinear:
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            raise ModelError(
                f"the adapter names a layer {name!r} that the base model {self.path} does not have"
            ) from None
        if isinstance(module, MultiLoraLinear):
            return module
        if not isinstance(module, nn.Linear | Int8Linear | Int4Linear):
            raise ModelError(f"the adapter targets {name!r}, a {type(module).__name__}; only linear layers are served")
        wrapped = MultiLoraLinear(module, self.selection, self.max_adapters + 1)
        replace_module(self.model, name, wrapped)
        return wrapped

    @torch.inference_mode()
    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, slots: torch.Tensor
    ) -> torch.Tensor:
        """The last position's logits [batch, vocab] (fp32), the cache updated in place."""
        if self.decoder is not None:
            with self.lock:
                return self.decoder.forward(ids, mask, positions, cache, slots)
        with self.lock:
            self.selection.select(slots if bool((slots > 0).any()) else None)
            try:
                out = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            finally:
                self.selection.select(None)
        return out.logits[:, -1, :].float()


@dataclass
class Prefill:
    """One prompt's prefill under way: its cache holds the first ``done`` of its ``ids``."""

    ids: list[int]
    slot: int
    cache: Any
    done: int


@dataclass
class Served:
    """What one model name serves: a base (shared), an adapter slot on it or none, its tokenizer and stops."""

    name: str
    base: Base
    adapter: str | None
    tokenizer: Any
    stop_ids: list[int]
    manifest: dict[str, Any] | None
    context_length: int

    def slot(self) -> int | None:
        """This model's slot on its base (0 for the base itself), loading the adapter if needed; None: no free slot."""
        if self.adapter is None:
            return 0
        found = self.base.slot(self.adapter)
        return found if found is not None else self.base.attach(AdapterWeights.read(self.adapter))

    def count_tokens(self, example: Example) -> int:
        return len(prompt_ids(self.tokenizer, example))

    def prompt(self, example: Example, config: GenerationConfig, limit: int | None = None) -> list[int]:
        """The prompt's token ids; ModelError when there are more than ``limit`` (a server's bound), or when
        they and ``maxOutputTokens`` overflow the context."""
        return check_prompt(prompt_ids(self.tokenizer, example), config, self.context_length, limit)

    def row(self, ids: list[int], config: GenerationConfig, on_text: Callable[[str], None] | None = None) -> Row:
        """A request's row: its answer held to what this model keeps (a tuned model's label set or schema) unless
        the request names its own responseMimeType (``constrain.kept_constraint``)."""
        try:
            from tunery.serving.constrain import kept_constraint
        except ImportError:
            return Row(self, ids, config, on_text=on_text)
        config = kept_constraint(config, self.manifest)
        return Row(self, ids, config, constraint=constraint_for(config, self.tokenizer), on_text=on_text)


def check_prompt(ids: list[int], config: GenerationConfig, context_length: int, limit: int | None) -> list[int]:
    if limit is not None and len(ids) > limit:
        raise ModelError(f"prompt of {len(ids)} tokens is over this server's limit of {limit} prompt tokens")
    if len(ids) + config.max_output_tokens > context_length:
        raise ModelError(
            f"prompt of {len(ids)} tokens plus maxOutputTokens {config.max_output_tokens} "
            f"exceeds the model's context of {context_length} tokens"
        )
    return ids


class Models:
    """The model host's loaded models: at most ``max_bases`` bases (least recently used dropped first, never one
    that rows run on), each with at most ``max_adapters`` adapters; tokenizers cached by model name."""

    def __init__(self, max_bases: int = 2, max_adapters: int = 8, weights: str = "auto") -> None:
        self.max_bases, self.max_adapters, self.weights = max_bases, max_adapters, resolve_weights(weights)
        self.bases: OrderedDict[str, Base] = OrderedDict()
        self.served: dict[str, Served] = {}
        self.busy: Callable[[Base], bool] = lambda base: False  # the decode loop says which bases rows run on
        self.lock = threading.RLock()

    def get(self, name: str) -> Served:
        """The served model for a catalog id, a local model directory or a tuned model directory (loaded once)."""
        with self.lock:
            served = self.served.get(name)
            if served is not None and served.base.path in self.bases:
                self.bases.move_to_end(served.base.path)
                return served
            served = self._load(name)
            self.served[name] = served
            return served

    def _load(self, name: str) -> Served:
        manifest = read_manifest(name) if is_tuned_dir(name) else None
        if manifest is None:
            found = resolve_base(name)
            tokenizer, context = load_tokenizer(found.path), found.context_length
            base, adapter = self._base(str(found.path)), None
        elif is_adapter(name) and not unstackable(json.loads((Path(name) / "adapter_config.json").read_text())):
            tokenizer = load_tokenizer(name)
            base, adapter = self._base(str(base_path(manifest))), str(name)
            context = base.context_length
        else:  # full weights, or an adapter merged into a copy of its base: a base of its own
            tokenizer = load_tokenizer(name)
            base, adapter = self._base(str(name), loader=lambda: _merged(name, manifest)), None
            context = base.context_length
        return Served(name, base, adapter, tokenizer, _stop_ids(base.model, tokenizer), manifest, context)

    def _base(self, path: str, loader: Callable[[], Any] | None = None) -> Base:
        if path in self.bases:
            self.bases.move_to_end(path)
            return self.bases[path]
        while len(self.bases) >= self.max_bases:
            idle = next((key for key, b in self.bases.items() if not self.busy(b)), None)
            if idle is None:
                break  # every loaded base has rows running: one more, for now
            self._drop_base(idle)
        make = lambda: Base(path, self.weights, self.max_adapters, model=loader() if loader is not None else None)  # noqa: E731
        base = self.bases[path] = on_own_thread(make)
        return base

    def _drop_base(self, path: str) -> None:
        import gc

        self.bases.pop(path, None)
        for key in [k for k, s in self.served.items() if s.base.path == path]:
            del self.served[key]
        gc.collect()  # free the dropped weights before the next ones load

    def evict(self, name: str) -> bool:
        """Forget a model (its directory was deleted or replaced); whether it was loaded. The caller makes sure
        that no row runs with it."""
        with self.lock:
            served = self.served.pop(name, None)
            if served is None:
                return False
            if served.adapter is not None:
                served.base.detach(served.adapter)
            elif served.base.path == str(name):  # a full model or a merged adapter: its own base
                self._drop_base(served.base.path)
            return True

    def loaded(self) -> list[str]:
        """The names served now, by their base's least recent use (read without the lock: a load may hold it)."""
        for _ in range(10):
            try:
                order = {path: i for i, path in enumerate(list(self.bases))}
                served = [(n, s.base.path) for n, s in list(self.served.items())]
                return [n for n, path in sorted(served, key=lambda x: order.get(x[1], -1)) if path in order]
            except RuntimeError:  # changed while read
                continue
        return []


def on_own_thread(work: Callable[[], Any]) -> Any:
    """``work()`` run on a thread that ends with it (its exception raised here).

    OpenMP keeps a pool of worker threads for each thread that has run a parallel torch operation, and while a
    second pool lives every parallel operation of either costs several times more (2 cores: an 8x576 by
    576x192 product took 57 us instead of 19, 8 rows of 8 adapters decoded at half the rate). Loading a model
    runs such operations; on a thread of its own, its pool ends with it, and the decode loop's is the only one.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="tunery-load-model")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _merged(name: str, manifest: dict[str, Any]) -> Any:
    from tunery.models.tuned import load_tuned

    model, _ = load_tuned(name)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


# --- rows and the continuous batch -------------------------------------------------------------------------


@dataclass(eq=False)
class Row:
    """One request in the decode loop: its prompt, settings, and what it has generated so far."""

    served: Served
    ids: list[int]
    config: GenerationConfig
    constraint: Any = None  # tunery.serving.constrain.Constraint: mask(vocab) / advance(id) / is_finished()
    on_text: Callable[[str], None] | None = None  # called with the text new since the last call (streaming)
    started: float = field(default_factory=time.perf_counter)
    out: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""
    sent: str = ""  # the text handed to on_text so far
    slot: int = 0
    generator: torch.Generator | None = None
    logprobs: list[TokenLogprob] | None = None  # when the config asks for them

    def __post_init__(self) -> None:
        if self.config.temperature > 0:
            self.generator = torch.Generator()
            seed = self.config.seed if self.config.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            self.generator.manual_seed(seed)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits [vocab]: its constraint applied, then argmax or its own sample."""
        if self.constraint is not None:
            allowed = self.constraint.mask(logits.shape[-1])
            logits = logits.masked_fill(~allowed, float("-inf"))
        token = self._pick(logits)
        if self.config.response_logprobs:
            self._record(logits, token)
        return token

    def _record(self, logits: torch.Tensor, token: int) -> None:
        """The chosen token's log probability and the top ones', at temperature 1 after the constraint."""
        logprobs = logits.float().log_softmax(-1)
        top = torch.topk(logprobs, min(self.config.logprobs or 0, logprobs.shape[-1]))
        decode = self.served.tokenizer.decode
        alternatives = tuple(
            (decode([int(i)]), int(i), float(lp)) for lp, i in zip(top.values, top.indices, strict=True) if lp > -1e30
        )
        if self.logprobs is None:
            self.logprobs = []
        self.logprobs.append(TokenLogprob(decode([token]), token, float(logprobs[token]), alternatives))

    def _pick(self, logits: torch.Tensor) -> int:
        config = self.config
        if config.temperature == 0:
            return int(logits.argmax())
        logits = logits / config.temperature
        if config.top_k > 0:
            kth = torch.topk(logits, min(config.top_k, logits.shape[-1])).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if config.top_p < 1.0:  # as transformers' TopPLogitsWarper: keep the smallest set reaching top_p
            ordered, order = torch.sort(logits, descending=False)
            cumulative = ordered.softmax(-1).cumsum(-1)
            remove = cumulative <= 1 - config.top_p
            remove[-1] = False
            logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))

    def push(self, token: int) -> None:
        """Record a generated token and end the row on a stop token, a stop sequence, its constraint or its limit."""
        self.out.append(token)
        stop_ids = self.served.stop_ids
        if self.constraint is not None and token not in stop_ids:
            self.constraint.advance(token)
        if token in stop_ids or (self.constraint is not None and self.constraint.is_finished()):
            self.finish_reason = "STOP"
        elif self.config.stop_sequences or self.on_text is not None:
            text = self._decoded()
            cut = min((text.index(s) for s in self.config.stop_sequences if s in text), default=None)
            if cut is not None:
                self.text, self.finish_reason = text[:cut].strip(), "STOP"
            else:
                self._stream(text)
        if not self.done and len(self.out) >= self.config.max_output_tokens:
            self.finish_reason = "MAX_TOKENS"
        if self.done:
            if not self.text:
                self.text = self._final_text()
            self._stream(self.text, final=True)

    def _decoded(self) -> str:
        ids = [t for t in self.out if t not in self.served.stop_ids]
        return self.served.tokenizer.decode(ids, skip_special_tokens=True)

    def _final_text(self) -> str:
        text = self._decoded()
        for stop in self.config.stop_sequences:
            if stop in text:
                text = text[: text.index(stop)]
        return text.strip()

    def _stream(self, text: str, final: bool = False) -> None:
        """Hand on_text what is new and certain: not trailing whitespace, a half-decoded character or the start
        of a stop sequence, which the next tokens may still change; the chunks join to the final text."""
        if self.on_text is None:
            return
        text = text.lstrip()
        if not final:
            text = text.rstrip().rstrip("\ufffd")
            held = max((_overlap(text, stop) for stop in self.config.stop_sequences), default=0)
            text = text[: len(text) - held].rstrip()
        if text.startswith(self.sent) and len(text) > len(self.sent):
            new, self.sent = text[len(self.sent) :], text
            self.on_text(new)

    def generation(self) -> Generation:
        return Generation(
            text=self.text,
            finish_reason=self.finish_reason or "MAX_TOKENS",
            prompt_tokens=len(self.ids),
            output_tokens=len(self.out),
            latency_ms=(time.perf_counter() - self.started) * 1000,
            logprobs=self._answer_logprobs(),
            end_logprob=sum(t.logprob for t in self.logprobs or [] if t.token_id in self.served.stop_ids),
        )

    def _answer_logprobs(self) -> tuple[TokenLogprob, ...] | None:
        """The answer's tokens' log probabilities, without the stop token that ended it (not part of the text)."""
        if not self.config.response_logprobs:
            return None
        found = self.logprobs or []
        return tuple(t for t in found if t.token_id not in self.served.stop_ids)


class Batch:
    """Rows of one base decoding together: one KV cache, left-padded to a common width, and the rows whose
    prompts are still being prefilled (``begin``/``fill``, a chunk between two steps) before they join."""

    def __init__(self, base: Base) -> None:
        self.base = base
        self.rows: list[Row] = []
        self.filling: list[tuple[Row, Prefill]] = []  # oldest first
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, width]: 1 where the cache holds a real token
        self.next_ids = torch.zeros(0, dtype=torch.long)  # each row's last token, the next step's input
        self.positions = torch.zeros(0, dtype=torch.long)  # the position that token takes

    def __len__(self) -> int:
        return len(self.rows) + len(self.filling)

    def add(self, row: Row) -> None:
        """Prefill ``row`` alone, at once, and merge its cache into the batch's; it decodes with the others from
        the next step (it has its first token already, and may be done with it)."""
        self.begin(row)
        self._fill(self.filling[-1], None)

    def begin(self, row: Row) -> None:
        """Take ``row`` in; its prompt is prefilled by ``fill`` calls (its adapter slot is held from now on)."""
        self.base.in_use[row.slot] = self.base.in_use.get(row.slot, 0) + 1
        self.filling.append((row, self.base.start(row.ids, row.slot)))

    def fill(self, chunk: int | None) -> Row | None:
        """Prefill the oldest waiting row's next ``chunk`` prompt tokens (None: all); the row once its prompt is
        in (it has joined the batch with its first token, or is done with it and has left), else None."""
        return self._fill(self.filling[0], chunk) if self.filling else None

    def _fill(self, entry: tuple[Row, Prefill], chunk: int | None) -> Row | None:
        row, prefill = entry
        logits = self.base.extend(prefill, chunk)
        if logits is None:
            return None
        self.filling.remove(entry)
        row.push(row.choose(logits[0]))
        if row.done:
            self.base.in_use[row.slot] -= 1
            return row
        n = len(row.ids)
        self._merge(prefill.cache, torch.ones(1, n, dtype=torch.long), row.out[-1], n)
        self.rows.append(row)
        return row

    def _merge(self, cache: Any, mask: torch.Tensor, token: int, position: int) -> None:
        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            ours, theirs = width - self.mask.shape[1], width - mask.shape[1]
            for mine, new in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, ours), _pad_left(new.keys, theirs)])
                mine.values = torch.cat([_pad_left(mine.values, ours), _pad_left(new.values, theirs)])
            pad = lambda m, k: torch.cat([m.new_zeros(m.shape[0], k), m], dim=1)  # noqa: E731
            self.mask = torch.cat([pad(self.mask, ours), pad(mask, theirs)])
        self.next_ids = torch.cat([self.next_ids, torch.tensor([token])])
        self.positions = torch.cat([self.positions, torch.tensor([position])])

    def step(self) -> list[Row]:
        """One token for every row; the rows that finished with it, which have left the batch."""
        if not self.rows:
            return []
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long)], dim=1)
        logits = self.base.forward(
            self.next_ids[:, None],
            self.mask,
            self.positions[:, None],
            self.cache,
            torch.tensor([r.slot for r in self.rows]),
        )
        tokens = []
        for i, row in enumerate(self.rows):
            token = row.choose(logits[i])
            row.push(token)
            tokens.append(token)
        self.next_ids, self.positions = torch.tensor(tokens), self.positions + 1
        finished = [row for row in self.rows if row.done]
        if finished:
            self.remove(finished)
        return finished

    def remove(self, rows: list[Row]) -> None:
        """Take rows out (finished or cancelled, decoding or still prefilling), and the padding columns no row
        needs any more."""
        for entry in [entry for entry in self.filling if entry[0] in rows]:
            self.filling.remove(entry)
            self.base.in_use[entry[0].slot] -= 1
        keep = [i for i, row in enumerate(self.rows) if row not in rows]
        for row in self.rows:
            if row in rows:
                self.base.in_use[row.slot] -= 1
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask = None, torch.zeros(0, 0, dtype=torch.long)
            self.next_ids, self.positions = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
            return
        index = torch.tensor(keep)
        self.mask, self.next_ids, self.positions = self.mask[index], self.next_ids[index], self.positions[index]
        start = int(self.mask.any(dim=0).int().argmax())  # the first column some row still reads
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
        self.mask = self.mask[:, start:]


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop`` (and is shorter than it)."""
    return next((n for n in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:n])), 0)


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` [batch, heads, seq, dim] with ``n`` zero positions before its sequence."""
    return t if n == 0 else torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[3]), t], dim=2)


def run_rows(rows: list[Row], max_batch: int = 64) -> list[Generation]:
    """Decode rows of one base to the end, at most ``max_batch`` at a time (the next joins as one finishes)."""
    if not rows:
        return []
    batch, waiting = Batch(rows[0].served.base), list(rows)
    while waiting or batch.rows:
        while waiting and len(batch) < max_batch:
            row = waiting.pop(0)
            slot = row.served.slot()
            if slot is None:
                raise ModelError(f"no free adapter slot for {row.served.name}")
            row.slot = slot
            batch.add(row)
        batch.step()
    return [row.generation() for row in rows]


def constraint_for(config: GenerationConfig, tokenizer: Any) -> Any:
    """The request's output constraint (``tunery.serving.constrain``), or None when it has none."""
    try:
        from tunery.serving.constrain import compile_constraint
    except ImportError:
        return None
    return compile_constraint(config, tokenizer)


# --- one model, alone ----------------------------------------------------------------------------------------


def served_weights() -> str:
    """The weights form ``tunery serve`` holds on this machine (``$TUNERY_SERVING_WEIGHTS`` resolved: ``auto`` is
    the fastest form this CPU runs): what an evaluation or the playground measures by default."""
    from tunery.settings import serving_weights

    return resolve_weights(serving_weights())


class Engine:
    """One loaded model: a catalog id, a local HF directory, or a tuned model directory (an adapter is served
    on its base through the adapter stacks, a full model as its own base). ``weights``: see the module doc."""

    def __init__(self, name: str | Path, weights: str = "fp32") -> None:
        self.name = str(name)
        from tunery.serving.multimodal import VisionLanguageModel, is_vision_language

        self.vlm: VisionLanguageModel | None = None
        if is_vision_language(self.name):  # a VLM dir: processor + generate, one row at a time
            self.vlm = VisionLanguageModel(self.name)
            self.manifest, self.tokenizer, self.model = self.vlm.manifest, self.vlm.tokenizer, self.vlm.model
            self.context_length = int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 2048))
            self.stop_ids = [self.tokenizer.eos_token_id]
            self.weights = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(self.model.dtype, str(self.model.dtype))
            return
        self.models = Models(max_bases=1, max_adapters=1, weights=weights)
        self.weights = self.models.weights  # the form resolved (``auto`` named)
        self.served = self.models.get(self.name)
        self.manifest = self.served.manifest
        self.tokenizer = self.served.tokenizer
        self.context_length = self.served.context_length
        self.stop_ids = self.served.stop_ids
        self.model = self.served.base.model

    def count_tokens(self, example: Example) -> int:
        if self.vlm is not None:
            return self.vlm.count_tokens(example)
        return self.served.count_tokens(example)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Every position's logits [batch, length, vocab] for token ids [batch, length], as this model serves them
        (a tuned adapter through its slot on the shared base; ``self.model`` alone is the base)."""
        slot = self.served.slot()
        if slot is None:
            raise ModelError(f"{self.name}: no free adapter slot on its base")
        base = self.served.base
        if base.decoder is not None:
            with base.lock:
                rows, n = ids.shape
                positions = torch.arange(n)[None].expand(rows, n)
                return base.decoder.forward(ids, None, positions, None, torch.full((rows,), slot), every_position=True)
        with base.lock:
            base.selection.select(torch.full((ids.shape[0],), slot) if slot else None)
            try:
                return base.model(input_ids=ids).logits.float()
            finally:
                base.selection.select(None)

    def prompt(self, example: Example, config: GenerationConfig, limit: int | None = None) -> list[int]:
        return self.served.prompt(example, config, limit)

    def generate(self, example: Example, config: GenerationConfig | None = None) -> Generation:
        config = config or GenerationConfig()
        if self.vlm is not None:
            return self.vlm.generate(example, config)
        return self.generate_batch([self.prompt(example, config)], [config])[0]

    def generate_batch(self, prompts: list[list[int]], configs: list[GenerationConfig]) -> list[Generation]:
        """One answer per prompt (token ids from ``prompt``), decoded together; each gets the answer it gets
        alone (greedy), or one from the same distribution (sampled; the same one for the same seed)."""
        rows = [self.served.row(ids, c) for ids, c in zip(prompts, configs, strict=True)]
        return run_rows(rows)


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    ids.add(tokenizer.eos_token_id)
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        ids.add(tokenizer.convert_tokens_to_ids(eot))
    return sorted(i for i in ids if i is not None)
