"""Shared prompt prefixes, computed once: the keys and values of recent prompts, per adapter slot of one base.

    prefixes = Prefixes(max_bytes=256 << 20)
    start, past = prefixes.longest(slot, ids)   # how many of ids' first tokens are computed (< len(ids)), their KV
    ... prefill ids[start:] after past ...
    prefixes.keep(slot, ids, layers)             # this prompt's keys and values per layer, for the next prompt
    prefixes.drop(slot)                          # the slot's adapter changed: its prompts' KV no longer holds

A prompt's keys and values at a position depend only on the tokens up to it (attention is causal), so a prompt
that starts with the same tokens as one computed before (a long system instruction, few-shot examples, a batch
file or an evaluation with one prompt) needs only the tokens after the shared part prefilled. Entries are whole
prompts, least recently used dropped first past ``max_bytes``; a lookup takes the longest common start over the
slot's entries, so the part every prompt shares is found without being named. An adapter changes every layer's
keys and values, so entries belong to one slot and go when its adapter does.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, kv_heads, length, head_dim]


@dataclass
class _Entry:
    slot: int
    ids: list[int]
    layers: KV
    size: int


def common_start(a: list[int], b: list[int]) -> int:
    """How many first tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


class Prefixes:
    """Recent prompts' keys and values of one base, at most ``max_bytes`` of them (0: none are kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self.size = 0
        self._ids = itertools.count()
        self.hits = self.reused = 0  # prompts that found a prefix, and the tokens they did not prefill

    def longest(self, slot: int, ids: list[int]) -> tuple[int, KV]:
        """The most first tokens of ``ids`` (always fewer than all: the last one is computed for its logits)
        that a kept prompt of ``slot`` shares, and their keys and values (views: the caller copies before
        writing); 0 and [] when none does."""
        best, found = 0, None
        for key, entry in self.entries.items():
            if entry.slot == slot:
                n = min(common_start(entry.ids, ids), len(ids) - 1)
                if n > best:
                    best, found = n, key
        if found is None:
            return 0, []
        self.entries.move_to_end(found)
        self.hits, self.reused = self.hits + 1, self.reused + best
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self.entries[found].layers]

    def keep(self, slot: int, ids: list[int], layers: KV) -> None:
        """Keep a prompt's keys and values (copied: the caller's cache grows in place); a kept prompt that this
        one starts with goes, and this one is not kept when a kept one starts with it."""
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        if size > self.max_bytes:
            return
        for key, entry in list(self.entries.items()):
            if entry.slot != slot:
                continue
            shared = common_start(entry.ids, ids)
            if shared == len(ids):
                self.entries.move_to_end(key)
                return
            if shared == len(entry.ids):
                self._pop(key)
        while self.entries and self.size + size > self.max_bytes:
            self._pop(next(iter(self.entries)))
        copied = [(k[:, :, : len(ids)].clone(), v[:, :, : len(ids)].clone()) for k, v in layers]
        self.entries[next(self._ids)] = _Entry(slot, list(ids), copied, size)
        self.size += size

    def drop(self, slot: int) -> None:
        """Forget the prompts of ``slot`` (its adapter was replaced or removed)."""
        for key in [key for key, entry in self.entries.items() if entry.slot == slot]:
            self._pop(key)

    def _pop(self, key: int) -> None:
        self.size -= self.entries.pop(key).size
