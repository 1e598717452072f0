"""Prompt configurations: a system instruction, an input template and few-shot examples."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunery.data.formats import Example, Part, Turn


@dataclass(frozen=True)
class Prompt:
    """How a request is built from an evaluation example's user turn.

    ``system`` replaces the example's system instruction (None keeps it); ``template`` wraps the last
    user text (``{input}`` marks where it goes); ``shots`` are earlier conversations put before it as
    user/model turns.
    """

    name: str = "as-is"
    system: str | None = None
    template: str = "{input}"
    shots: tuple[Example, ...] = field(default=())

    def apply(self, example: Example) -> Example:
        request = example.prompt()
        turns = []
        for shot in self.shots:
            turns += [
                Turn("user", (Part("text", self.template.format(input=shot.prompt().turns[-1].text)),)),
                Turn("model", (Part("text", shot.target),)),
            ]
        *earlier, last = request.turns
        turns += [*earlier, Turn("user", (Part("text", self.template.format(input=last.text)),))]
        system = self.system if self.system is not None else request.system
        return Example(turns=tuple(turns), system=system, line=example.line)
