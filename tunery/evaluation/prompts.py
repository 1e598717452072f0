"""Prompt configurations: a system instruction, an input template and k few-shot examples.

A prompt is written in YAML (``--prompt PROMPT.yaml``)::

    name: few-shot                 # optional; default: the file name
    system: |                      # optional; replaces each example's system instruction ("" drops it)
      Route the ticket to one team. Answer with the label only.
    template: "Ticket: {input}\\nLabel:"   # optional; {input} marks the user's text
    shots: 5                       # optional; k few-shot examples put before the request
    shots_file: train.jsonl        # where the shots come from (relative to the YAML file)
    shots_pick: balanced           # balanced (cycle the answers), first, or random
    seed: 0                        # for shots_pick: random
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery.data.formats import Example, Part, Turn
from tunery.data.validation import read_examples
from tunery.errors import ConfigError, DatasetError

INPUT = "{input}"
PICKS = ("balanced", "first", "random")
KEYS = ("name", "system", "template", "shots", "shots_file", "shots_pick", "seed")


@dataclass(frozen=True)
class Prompt:
    """How a request is built from an evaluation example's user turn.

    ``system`` replaces the example's system instruction (None keeps it); ``template`` wraps the last
    user text (``{input}`` marks where it goes); ``shots`` are earlier conversations put before it as
    user/model turns.
    """

    name: str = "as-is"
    system: str | None = None
    template: str = INPUT
    shots: tuple[Example, ...] = field(default=())

    def fill(self, text: str) -> str:
        return self.template.replace(INPUT, text)

    def apply(self, example: Example) -> Example:
        request = example.prompt()
        turns = []
        for shot in self.shots:
            asked = shot.prompt().turns[-1]
            turns += [with_text(asked, self.fill(asked.text)), Turn("model", (Part("text", shot.target),))]
        *earlier, last = request.turns
        turns += [*earlier, with_text(last, self.fill(last.text))]
        system = self.system if self.system is not None else request.system
        return Example(turns=tuple(turns), system=system or None, line=example.line)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "system": self.system, "template": self.template, "shots": len(self.shots)}


def with_text(turn: Turn, text: str) -> Turn:
    """``turn`` with its text parts replaced by one part holding ``text``, where its first text part was (after its
    media when it had none); its media parts kept in place."""
    parts = turn.parts
    first = next((k for k, p in enumerate(parts) if p.kind == "text"), len(parts))
    media = [p for p in parts if p.kind != "text"]
    before = sum(1 for p in parts[:first] if p.kind != "text")
    new = (*media[:before], Part("text", text), *media[before:]) if text or not media else tuple(media)
    return Turn(turn.role, new)


def pick_shots(examples: list[Example], k: int, how: str = "balanced", seed: int = 0) -> tuple[Example, ...]:
    """``k`` examples: the first ones, a seeded random sample, or one per answer in turn (balanced)."""
    if how == "first":
        return tuple(examples[:k])
    if how == "random":
        return tuple(random.Random(seed).sample(examples, min(k, len(examples))))
    by_answer: dict[str, list[Example]] = {}
    for example in examples:
        by_answer.setdefault(example.target.strip(), []).append(example)
    picked: list[Example] = []
    queues = list(by_answer.values())
    while len(picked) < min(k, len(examples)):
        for queue in queues:
            if queue and len(picked) < k:
                picked.append(queue.pop(0))
    return tuple(picked)


def load_prompt(path: str | Path) -> Prompt:
    """Read a prompt YAML (see the module docstring); every mistake is a ``ConfigError`` naming the file and key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such prompt file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {', '.join(KEYS)}; got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; expected {', '.join(KEYS)}")
    name = _string(raw, "name", path) or path.stem
    system = _string(raw, "system", path)
    template = _string(raw, "template", path) or INPUT
    if INPUT not in template:
        raise ConfigError(f"{path}: template: {template!r} has no {INPUT} for the user's text")
    return Prompt(name=name, system=system, template=template, shots=_shots(raw, path))


def _string(raw: dict[str, Any], key: str, path: Path) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: {key}: expected text, got {value!r}")
    return value


def _shots(raw: dict[str, Any], path: Path) -> tuple[Example, ...]:
    k = raw.get("shots", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"{path}: shots: expected a whole number of examples (0 or more), got {k!r}")
    how = raw.get("shots_pick", "balanced")
    if how not in PICKS:
        raise ConfigError(f"{path}: shots_pick: {how!r}; expected one of {', '.join(PICKS)}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{path}: seed: expected a whole number, got {seed!r}")
    if not k:
        return ()
    source = _string(raw, "shots_file", path)
    if not source:
        raise ConfigError(f"{path}: shots: {k} needs shots_file, the JSONL the examples are drawn from")
    file = (path.parent / source) if not Path(source).is_absolute() else Path(source)
    from tunery.evaluation.tasks import ALL_MODALITIES
    from tunery.serving.multimodal import inline_media

    report = read_examples(file, modalities=ALL_MODALITIES)  # a shot's media: checked by the model it goes to
    if report.errors:
        raise DatasetError(f"{file} (shots_file of {path}): {len(report.errors)} problem(s)", report.errors)
    return tuple(inline_media(shot, file.parent) for shot in pick_shots(report.examples, k, how, seed))
