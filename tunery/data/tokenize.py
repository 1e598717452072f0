"""Example → token ids + loss mask, through the model's own chat template.

The whole conversation is rendered once with the tokenizer's chat template and tokenized once, so the
tokens a model trains on are the tokens it sees at prediction time. Which characters are trained is
found by rendering the conversation turn by turn: the text a model turn adds after the generation
prompt is its answer followed by the template's end-of-turn marker. Loss covers the answer and the
end-of-turn token, nothing else (not the newline some templates put after it).

A PDF part reaches a text-only model as its extracted text, page by page under ``--- page N ---`` markers
(``tunery.data.documents``); ``source`` says where a ``fileData`` PDF resolves (the dataset's folder or a
``MediaSource``; None: inline data only).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

from tunery.data.documents import text_example
from tunery.data.formats import Example

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The chat template cannot be used for training (it does not render turn by turn)."""


@dataclass(frozen=True)
class Encoded:
    """One tokenized example. ``labels`` holds the token id where loss is taken, else ``IGNORE_INDEX``."""

    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def input_tokens(self) -> int:
        return len(self.input_ids) - self.trained_tokens


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_ids(tokenizer: Any, example: Example, source: Any = None) -> list[int]:
    """Token ids of the prompt for the model's next turn, exactly as in training (PDF parts as their text)."""
    text = render(tokenizer, text_example(example.prompt(), source).messages(), add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


_special_patterns: weakref.WeakKeyDictionary[Any, re.Pattern[str]] = weakref.WeakKeyDictionary()


def special_pattern(tokenizer: Any) -> re.Pattern[str]:
    """A pattern matching any of the tokenizer's special and added token strings, longest first.

    Built once per tokenizer: Gemma's has over 6,000 added tokens.
    """
    if tokenizer not in _special_patterns:
        specials = set(getattr(tokenizer, "all_special_tokens", []))
        specials |= {t.content if hasattr(t, "content") else str(t) for t in tokenizer.added_tokens_decoder.values()}
        ordered = sorted((s for s in specials if s), key=len, reverse=True)
        _special_patterns[tokenizer] = re.compile("|".join(map(re.escape, ordered)) or r"(?!)")
    return _special_patterns[tokenizer]


def trained_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each model answer plus its end-of-turn marker."""
    full = render(tokenizer, messages)
    specials = special_pattern(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = full if i + 1 == len(messages) else render(tokenizer, messages[: i + 1])
        if not (through.startswith(before) and full.startswith(through)):
            raise TemplateError("the chat template does not render a conversation turn by turn")
        added = through[len(before) :]
        answer = message["content"].strip()
        at = added.find(answer)
        if at < 0:
            raise TemplateError("the chat template changes the model's answer text")
        end = at + len(answer)
        while at > 0 and added[at - 1].isspace():  # the answer's own leading whitespace: the model writes it
            at -= 1
        marker = specials.match(added, end + _spaces(added, end))
        if marker is not None:
            end = marker.end()
        spans.append((len(before) + at, len(before) + end))
    return full, spans


def _spaces(text: str, at: int) -> int:
    """Whitespace at ``text[at:]`` (an answer ending in a newline still trains its end-of-turn marker)."""
    n = 0
    while at + n < len(text) and text[at + n].isspace():
        n += 1
    return n


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the chat template closes a model turn with (``<|im_end|>``, ``<end_of_turn>``)."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    full, spans = trained_spans(tokenizer, probe)
    start, end = spans[0]
    tail = full[start:end][len("pong") :].strip()
    return tail or None


def encode(
    tokenizer: Any, example: Example, max_length: int, source: Any = None, last_turn_only: bool = False
) -> Encoded:
    """Tokenize ``example`` (PDF parts as their text, resolved against ``source``); tokens that start inside a
    trained span carry labels, the rest are masked. ``last_turn_only``: only the final model turn is a trained span
    (a preference answer; earlier model turns are prompt)."""
    text, spans = trained_spans(tokenizer, text_example(example, source).messages())
    spans = spans[-1:] if last_turn_only else spans
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for k, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(s <= start < e for s, e in spans):
            labels[k] = ids[k]
    return Encoded(input_ids=ids[:max_length], labels=labels[:max_length], full_length=len(ids))


@dataclass(frozen=True)
class EncodedPair:
    """One tokenized preference pair: the prompt with the chosen answer and with the rejected one (labels on the
    answer and its end-of-turn token only), and, once computed, the reference model's log-probability of each."""

    chosen: Encoded
    rejected: Encoded
    reference: tuple[float, float] | None = None

    @property
    def input_ids(self) -> list[int]:
        """Both sides' tokens, end to end: their count is what the pair costs (batching, statistics)."""
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def encode_pair(tokenizer: Any, pair: Any, max_length: int) -> EncodedPair:
    """Tokenize a ``formats.Preference``: each side is the prompt plus that answer, trained on the answer only."""
    return EncodedPair(
        encode(tokenizer, pair.example(chosen=True), max_length, last_turn_only=True),
        encode(tokenizer, pair.example(chosen=False), max_length, last_turn_only=True),
    )
