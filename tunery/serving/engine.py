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

    @torch.inference_mode()
    def generate(self, example: Example, config: GenerationConfig | None = None) -> Generation:
        config = config or GenerationConfig()
        started = time.perf_counter()
        ids = prompt_ids(self.tokenizer, example)
        if len(ids) + config.max_output_tokens > self.context_length:
            raise ModelError(
                f"prompt of {len(ids)} tokens plus maxOutputTokens {config.max_output_tokens} "
                f"exceeds the model's context of {self.context_length} tokens"
            )
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
        out = self.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=config.max_output_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
            **extra,
        )[0, len(ids) :].tolist()
        stopped = bool(out) and out[-1] in self.stop_ids
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        for stop in config.stop_sequences:
            if stop in text:
                text, stopped = text[: text.index(stop)], True
        return Generation(
            text=text.strip(),
            finish_reason="STOP" if stopped else "MAX_TOKENS",
            prompt_tokens=len(ids),
            output_tokens=len(out),
            latency_ms=(time.perf_counter() - started) * 1000,
        )


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
