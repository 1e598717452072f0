"""Seeded input perturbations for robustness checks: typos, case, whitespace.

Each one rewrites the user's text of the final turn only; the same seed and line give the same
output on every run and machine (``random.Random`` seeded from the seed, the line and the name).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from tunery.data.formats import Example
from tunery.errors import ConfigError
from tunery.evaluation.prompts import with_text

TYPO_RATE = 0.08  # share of words of 3+ letters that get one typo
KEYBOARD_NEIGHBOURS = {
    "a": "qwsz", "b": "vghn", "c": "xdfv", "d": "serfcx", "e": "wsdr", "f": "drtgvc", "g": "ftyhbv",
    "h": "gyujnb", "i": "ujko", "j": "huikmn", "k": "jiolm", "l": "kop", "m": "njk", "n": "bhjm",
    "o": "iklp", "p": "ol", "q": "wa", "r": "edft", "s": "awedxz", "t": "rfgy", "u": "yhji",
    "v": "cfgb", "w": "qase", "x": "zsdc", "y": "tghu", "z": "asx",
}  # fmt: skip


def typos(text: str, rng: random.Random) -> str:
    """About one word in twelve (at least one) gets a swap, a drop, a double or a neighbouring key."""
    words = re.split(r"(\s+)", text)
    candidates = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha()]
    if not candidates:
        return text
    chosen = rng.sample(candidates, max(1, round(TYPO_RATE * len(candidates))))
    for i in chosen:
        words[i] = _one_typo(words[i], rng)
    return "".join(words)


def _one_typo(word: str, rng: random.Random) -> str:
    at = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double", "neighbour"))
    if kind == "swap":
        return word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    if kind == "drop":
        return word[:at] + word[at + 1 :]
    if kind == "double":
        return word[:at] + word[at] + word[at:]
    near = KEYBOARD_NEIGHBOURS.get(word[at].lower(), word[at])
    return word[:at] + rng.choice(near) + word[at + 1 :]


def case(text: str, rng: random.Random) -> str:
    """All upper case, all lower case, or each word's case flipped at random."""
    style = rng.choice(("upper", "lower", "random"))
    if style == "upper":
        return text.upper()
    if style == "lower":
        return text.lower()
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def whitespace(text: str, rng: random.Random) -> str:
    """Spaces doubled or turned into tabs at random, and stray spaces or a newline at the ends."""
    out = "".join(rng.choice(("  ", "\t", " ", "   ")) if c == " " else c for c in text)
    return rng.choice(("", " ", "\n")) + out + rng.choice(("", "  ", "\n"))


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {"case": case, "typos": typos, "whitespace": whitespace}


def parse_perturbations(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"typos,case"`` → ``("typos", "case")``; an unknown name is a ``ConfigError``."""
    if not spec:
        return ()
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ConfigError(f"--perturb {', '.join(unknown)}: unknown; expected any of {', '.join(PERTURBATIONS)}")
    return tuple(dict.fromkeys(names))


def perturb_text(text: str, name: str, seed: int = 0, line: int = 0) -> str:
    rng = random.Random(f"{seed}:{line}:{name}")
    return PERTURBATIONS[name](text, rng)


def perturb_example(example: Example, name: str, seed: int = 0) -> Example:
    """``example`` with the text of its last user turn perturbed (its target untouched): one text part where its
    first text part was, its media parts kept in place."""
    turns = list(example.turns)
    index = max(i for i, t in enumerate(turns) if t.role == "user")
    turns[index] = with_text(turns[index], perturb_text(turns[index].text, name, seed, example.line))
    return Example(turns=tuple(turns), system=example.system, line=example.line)
