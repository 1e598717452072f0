"""Inference: load a base or tuned model once, build prompts with its training template, generate.

A LoRA adapter is folded into a private copy of the base weights on load (``merge_and_unload``), so
prediction runs at the base model's speed; merged and unmerged logits are equal (tested).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tunery.data.formats import Example
from tunery.data.tokenize import end_of_turn_token, prompt_ids
from tunery.errors import ModelError
from tunery.models.loading import load_model, load_tokenizer
from tunery.models.sources import resolve_base
from tunery.models.tuned import is_tuned_dir, load_tuned, read_manifest
from tunery.serving.gemini import Generation, GenerationConfig


class Engine:
    """One loaded model: a catalog id, a local HF directory, or a tuned model directory."""

    def __init__(self, name: str | Path) -> None:
        self.name = str(name)
        if is_tuned_dir(name):
            self.manifest: dict[str, Any] | None = read_manifest(name)
            model, self.tokenizer = load_tuned(name)
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()
            self.context_length = _context_length(model)
        else:
            self.manifest = None
            base = resolve_base(name)
            model, self.tokenizer = load_model(base.path), load_tokenizer(base.path)
            self.context_length = base.context_length
        self.model = model.eval()
        self.stop_ids = _stop_ids(self.model, self.tokenizer)

    def count_tokens(self, example: Example) -> int:
        return len(prompt_ids(self.tokenizer, example))

    def prompt(self, example: Example, config: GenerationConfig, limit: int | None = None) -> list[int]:
        """The prompt's token ids; ModelError when there are more than ``limit`` (a server's bound), or when
        they and ``maxOutputTokens`` overflow the context."""
        ids = prompt_ids(self.tokenizer, example)
        if limit is not None and len(ids) > limit:
            raise ModelError(f"prompt of {len(ids)} tokens is over this server's limit of {limit} prompt tokens")
        if len(ids) + config.max_output_tokens > self.context_length:
            raise ModelError(
                f"prompt of {len(ids)} tokens plus maxOutputTokens {config.max_output_tokens} "
                f"exceeds the model's context of {self.context_length} tokens"
            )
        return ids

    def generate(self, example: Example, config: GenerationConfig | None = None) -> Generation:
        config = config or GenerationConfig()
        return self.generate_batch([self.prompt(example, config)], [config])[0]

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], configs: list[GenerationConfig]) -> list[Generation]:
        """One answer per prompt (token ids from ``prompt``), generated together: the prompts are left-padded
        into one batch and each answer ends at its first stop token or its own ``maxOutputTokens``. Several
        prompts must all be ``batchable``: greedy, so each gets the answer it gets alone."""
        started = time.perf_counter()
        config = configs[0]
        if len(prompts) > 1 and not all(map(batchable, configs)):
            raise ValueError("only greedy requests without stop sequences are generated together")
        if config.seed is not None:
            torch.manual_seed(config.seed)
        sampling: dict[str, Any] = {"do_sample": False}
        if config.temperature > 0:
            sampling = {
                "do_sample": True,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "top_k": config.top_k,
            }
        extra = (
            {"stop_strings": list(config.stop_sequences), "tokenizer": self.tokenizer} if config.stop_sequences else {}
        )
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        out = self.model.generate(
            input_ids=torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts]),
            attention_mask=torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]),
            max_new_tokens=max(c.max_output_tokens for c in configs),
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
            **sampling,
            **extra,
        )[:, width:].tolist()
        latency_ms = (time.perf_counter() - started) * 1000
        return [self._answer(row, len(ids), c, latency_ms) for row, ids, c in zip(out, prompts, configs, strict=True)]

    def _answer(self, row: list[int], prompt_tokens: int, config: GenerationConfig, latency_ms: float) -> Generation:
        """Generated ids as an answer: up to the first stop token (what follows it in a batch is padding), at
        most ``maxOutputTokens``, the text cut at the first stop sequence."""
        end = next((i + 1 for i, token in enumerate(row) if token in self.stop_ids), len(row))
        row = row[: min(end, config.max_output_tokens)]
        stopped = bool(row) and row[-1] in self.stop_ids
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        for stop in config.stop_sequences:
            if stop in text:
                text, stopped = text[: text.index(stop)], True
        return Generation(
            text=text.strip(),
            finish_reason="STOP" if stopped else "MAX_TOKENS",
            prompt_tokens=prompt_tokens,
            output_tokens=len(row),
            latency_ms=latency_ms,
        )


def batchable(config: GenerationConfig) -> bool:
    """Whether a request may share a batch: greedy (a sampled one has its own seed and settings) and without
    stop sequences (a row ended by one would be padded, and its padding told apart from its answer only by
    guessing), so that its answer is the one it gets alone."""
    return config.temperature == 0 and not config.stop_sequences


def _context_length(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    ids.add(tokenizer.eos_token_id)
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        ids.add(tokenizer.convert_tokens_to_ids(eot))
    return sorted(i for i in ids if i is not None)
