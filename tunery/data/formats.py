"""Dataset formats: the Gemini/Vertex form (primary) and the OpenAI chat form, auto-detected per line.

Parsing turns one decoded JSON object into an ``Example`` or into a list of problems, each naming
the field at fault (``contents[1].parts[0].text``). Nothing here knows about tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["user", "model"]
Modality = Literal["text", "image", "audio", "pdf", "video"]
MAX_MIME_TYPE = 255


@dataclass(frozen=True)
class Part:
    """One part of a turn: text, or media given inline (``inlineData``) or by URI (``fileData``)."""

    kind: Literal["text", "inlineData", "fileData"]
    text: str = ""
    mime_type: str = ""
    data: str = ""  # inlineData: the base64 payload as given
    uri: str = ""  # fileData: the fileUri as given (files/{id}, a relative path, file://, http(s)://)

    @property
    def modality(self) -> Modality:
        if self.kind == "text":
            return "text"
        return modality_of(self.mime_type)


@dataclass(frozen=True)
class Turn:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if p.kind == "text")


@dataclass(frozen=True)
class Example:
    """A conversation: an optional system instruction and turns that end with the model's."""

    turns: tuple[Turn, ...]
    system: str | None = None
    line: int = 0

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat-template messages (``assistant`` for the model role)."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out += [{"role": "assistant" if t.role == "model" else "user", "content": t.text} for t in self.turns]
        return out

    def prompt(self) -> Example:
        """The example without its final model turn: what a prediction request sends."""
        turns = self.turns[:-1] if self.turns and self.turns[-1].role == "model" else self.turns
        return Example(turns=turns, system=self.system, line=self.line)

    @property
    def target(self) -> str:
        """The text of the final model turn (the label, for a classification task)."""
        return self.turns[-1].text if self.turns and self.turns[-1].role == "model" else ""


def modality_of(mime_type: str) -> Modality:
    major = mime_type.split("/", 1)[0].lower()
    if mime_type.lower() == "application/pdf":
        return "pdf"
    if major in ("image", "audio", "video"):
        return major  # type: ignore[return-value]
    return "text"


def not_unicode(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, as ``"\\ud800"`` in JSON makes), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}"
    return None


def user_example(text: str, system: str | None = None) -> Example:
    """A one-turn request, as `predict` and `generate_content` build it from a string."""
    return Example(turns=(Turn("user", (Part("text", text),)),), system=system)


class _Problems:
    """Collects (field, message) pairs while one line is parsed."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.items.append((field, message))


def parse_example(
    obj: Any, line: int = 0, require_model_turn: bool = True
) -> tuple[Example | None, list[tuple[str, str]]]:
    """Parse one dataset line; returns the example (None if invalid) and every (field, message) problem."""
    problems = _Problems()
    if not isinstance(obj, dict):
        problems.add("line", f"expected a JSON object, got {type(obj).__name__}")
        return None, problems.items
    if "contents" in obj:
        example, roles = _parse_gemini(obj, problems, line)
    elif "messages" in obj:
        example, roles = _parse_openai(obj, problems, line)
    else:
        keys = ", ".join(k[:40] for k in sorted(obj)[:10]) + (", ..." if len(obj) > 10 else "") or "none"
        problems.add("line", f"expected 'contents' (Gemini form) or 'messages' (OpenAI form); found keys: {keys}")
        return None, problems.items
    if roles:
        _check_turn_order(roles, problems, "contents" if "contents" in obj else "messages", require_model_turn)
    return (example if not problems.items else None), problems.items


Roles = list[tuple[int, str]] | None
"""``(index, "user" | "model")`` of each conversation turn, by its index in the line's list, so that turn order
is checked even where a turn's text is at fault; None where some turn has no known role."""


def _parse_gemini(obj: dict, problems: _Problems, line: int) -> tuple[Example | None, Roles]:
    system = None
    if "systemInstruction" in obj:
        parts = _parse_parts(obj["systemInstruction"], "systemInstruction", problems)
        if parts is not None:
            if any(p.kind != "text" for p in parts):
                problems.add("systemInstruction.parts", "the system instruction takes text parts only")
            system = "".join(p.text for p in parts)
    contents = obj["contents"]
    if not isinstance(contents, list) or not contents:
        problems.add("contents", "must be a non-empty list of turns")
        return None, None
    turns = []
    roles: Roles = []
    for i, turn in enumerate(contents):
        field = f"contents[{i}]"
        if not isinstance(turn, dict):
            problems.add(field, "must be an object with 'role' and 'parts'")
            roles = None
            continue
        role = turn.get("role")
        if role not in ("user", "model"):
            hint = " (the Gemini form says 'model', not 'assistant')" if role == "assistant" else ""
            problems.add(f"{field}.role", f"unknown role {role!r}; expected 'user' or 'model'{hint}")
            roles = None
            continue
        if roles is not None:
            roles.append((i, role))
        parts = _parse_parts(turn, field, problems)
        if parts is not None:
            turns.append(Turn(role, tuple(parts)))
    return Example(turns=tuple(turns), system=system, line=line), roles


def _parse_parts(container: Any, field: str, problems: _Problems) -> list[Part] | None:
    if not isinstance(container, dict) or not isinstance(container.get("parts"), list) or not container["parts"]:
        problems.add(f"{field}.parts", "missing or empty; expected a list of parts")
        return None
    parts = []
    for j, part in enumerate(container["parts"]):
        pfield = f"{field}.parts[{j}]"
        if not isinstance(part, dict):
            problems.add(pfield, "must be an object with 'text', 'inlineData' or 'fileData'")
            continue
        kinds = [k for k in ("text", "inlineData", "fileData") if k in part]
        if len(kinds) != 1:
            problems.add(pfield, "must have exactly one of 'text', 'inlineData', 'fileData'")
            continue
        kind = kinds[0]
        if kind == "text":
            text = part["text"]
            if not isinstance(text, str) or not text.strip():
                problems.add(f"{pfield}.text", "empty text" if isinstance(text, str) else "text must be a string")
                continue
            if bad := not_unicode(text):
                problems.add(f"{pfield}.text", bad)
                continue
            parts.append(Part("text", text=text))
            continue
        media = part[kind]
        needed = ("mimeType", "data") if kind == "inlineData" else ("mimeType", "fileUri")
        missing = [k for k in needed if not isinstance(media, dict) or not media.get(k)]
        if missing:
            problems.add(f"{pfield}.{kind}", f"missing {', '.join(missing)}")
            continue
        mime_type = media["mimeType"]
        if not isinstance(mime_type, str) or not_unicode(mime_type) or len(mime_type) > MAX_MIME_TYPE:
            problems.add(
                f"{pfield}.{kind}.mimeType",
                f"expected a MIME type such as image/png (at most {MAX_MIME_TYPE} characters)",
            )
            continue
        if kind == "inlineData":
            parts.append(Part("inlineData", mime_type=mime_type, data=str(media["data"])))
        else:
            parts.append(Part("fileData", mime_type=mime_type, uri=str(media["fileUri"])))
    return parts


def _parse_openai(obj: dict, problems: _Problems, line: int) -> tuple[Example | None, Roles]:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        problems.add("messages", "must be a non-empty list of messages")
        return None, None
    system = None
    turns = []
    roles: Roles = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.add(field, "must be an object with 'role' and 'content'")
            roles = None
            continue
        role = message.get("role")
        text = _openai_content(message.get("content"), f"{field}.content", problems)
        if role == "system":
            if i != 0:
                problems.add(f"{field}.role", "a system message may only come first")
            elif text is not None:
                system = text
        elif role in ("user", "assistant"):
            speaker: Literal["user", "model"] = "model" if role == "assistant" else "user"
            if roles is not None:
                roles.append((i, speaker))
            if text is not None:
                turns.append(Turn(speaker, (Part("text", text=text),)))
        else:
            hint = " (the OpenAI form says 'assistant', not 'model')" if role == "model" else ""
            problems.add(f"{field}.role", f"unknown role {role!r}; expected 'system', 'user' or 'assistant'{hint}")
            roles = None
    return Example(turns=tuple(turns), system=system, line=line), roles


def _openai_content(content: Any, field: str, problems: _Problems) -> str | None:
    if isinstance(content, list):
        texts = [c.get("text") for c in content if isinstance(c, dict) and c.get("type") == "text"]
        others = [
            c.get("type") if isinstance(c, dict) else type(c).__name__
            for c in content
            if not (isinstance(c, dict) and c.get("type") == "text")
        ]
        if others:
            problems.add(field, f"unsupported content part type(s) {others}; this form takes text parts")
            return None
        content = "".join(t for t in texts if isinstance(t, str))
    if not isinstance(content, str):
        problems.add(field, "missing; expected a string")
        return None
    if not content.strip():
        problems.add(field, "empty text")
        return None
    if bad := not_unicode(content):
        problems.add(field, bad)
        return None
    return content


def _check_turn_order(roles: list[tuple[int, str]], problems: _Problems, field: str, require_model_turn: bool) -> None:
    """User first, then alternating, and (for training) the model's answer last; each problem at its turn."""
    first, role = roles[0]
    if role != "user":
        problems.add(f"{field}[{first}].role", "the first turn must be the user's")
    for (_, before), (i, role) in zip(roles, roles[1:], strict=False):
        if role == before:
            problems.add(f"{field}[{i}].role", f"two {role} turns in a row; roles must alternate")
    if require_model_turn and roles[-1][1] != "model":
        problems.add(field, "no model turn at the end; the last turn must be the model's answer")


# Preference data (DPO): a prompt and two answers, one preferred. Three shapes, detected per line.

PREFERENCE_KEYS = ("completions", "preferred_output", "non_preferred_output", "chosen", "rejected")
"""A line holding any of these is a preference pair (Vertex, OpenAI or TRL shape), else a supervised example."""


@dataclass(frozen=True)
class Preference:
    """A prompt (turns ending with the user's) and two model answers: ``chosen`` preferred over ``rejected``."""

    prompt: Example
    chosen: str
    rejected: str
    line: int = 0
    sides: tuple[str, str] = ("chosen", "rejected")  # the fields each answer came from, for messages

    def example(self, chosen: bool) -> Example:
        """The prompt followed by one answer as the model's turn: what a side's log-probability is taken on."""
        answer = Turn("model", (Part("text", text=self.chosen if chosen else self.rejected),))
        return Example(turns=(*self.prompt.turns, answer), system=self.prompt.system, line=self.line)


def is_preference(obj: Any) -> bool:
    return isinstance(obj, dict) and any(key in obj for key in PREFERENCE_KEYS)


def parse_preference(obj: Any, line: int = 0) -> tuple[Preference | None, list[tuple[str, str]]]:
    """Parse one preference line (Vertex ``contents`` + ``completions``; OpenAI ``input`` + ``preferred_output`` +
    ``non_preferred_output``; TRL ``prompt`` + ``chosen`` + ``rejected``, plain text or conversational); returns the
    pair (None if invalid) and every (field, message) problem."""
    problems = _Problems()
    if not isinstance(obj, dict):
        problems.add("line", f"expected a JSON object, got {type(obj).__name__}")
        return None, problems.items
    if "completions" in obj:
        found = _parse_vertex_pair(obj, problems, line)
    elif "preferred_output" in obj or "non_preferred_output" in obj:
        found = _parse_openai_pair(obj, problems, line)
    else:
        found = _parse_trl_pair(obj, problems, line)
    if found is None or problems.items:
        return None, problems.items
    prompt, (chosen, chosen_field), (rejected, rejected_field) = found
    if chosen.strip() == rejected.strip():
        problems.add(rejected_field, f"the same text as {chosen_field}; a pair needs two different answers")
        return None, problems.items
    return Preference(prompt, chosen, rejected, line, (chosen_field, rejected_field)), problems.items


Answer = tuple[str, str]  # (text, field)
Found = tuple[Example, Answer, Answer] | None


def _prompt_ends_with_user(prompt: Example | None, roles: Roles, field: str, problems: _Problems) -> Example | None:
    if roles:
        _check_turn_order(roles, problems, field, require_model_turn=False)
        if roles[-1][1] != "user":
            problems.add(f"{field}[{roles[-1][0]}].role", "the prompt must end with a user turn (the answers follow)")
    elif roles is not None and prompt is not None and not prompt.turns:
        problems.add(field, "the prompt has no user turn")
    return prompt


def _parse_vertex_pair(obj: dict, problems: _Problems, line: int) -> Found:
    prompt, roles = _parse_gemini(obj, problems, line)
    _prompt_ends_with_user(prompt, roles, "contents", problems)
    completions = obj["completions"]
    if not isinstance(completions, list) or len(completions) != 2:
        got = len(completions) if isinstance(completions, list) else type(completions).__name__
        problems.add("completions", f"expected exactly two completions, got {got}")
        return None
    scored: list[tuple[int, str, str]] = []
    for i, item in enumerate(completions):
        field = f"completions[{i}]"
        if not isinstance(item, dict):
            problems.add(field, 'must be an object with "score" and "completion"')
            continue
        score = item.get("score")
        if isinstance(score, bool) or score not in (0, 1):
            problems.add(f"{field}.score", f"expected 0 or 1, got {str(score)[:20] if 'score' in item else 'none'}")
            continue
        text = _model_answer(item.get("completion"), f"{field}.completion", problems)
        if text is not None:
            scored.append((int(score), text, field))
    if len(scored) != 2:
        return None
    if scored[0][0] == scored[1][0]:
        problems.add("completions[1].score", f"both completions score {scored[0][0]}; one must score 1, the other 0")
        return None
    (_, rejected, rejected_field), (_, chosen, chosen_field) = sorted(scored)
    return prompt or Example(()), (chosen, chosen_field), (rejected, rejected_field)


def _model_answer(completion: Any, field: str, problems: _Problems) -> str | None:
    if not isinstance(completion, dict):
        problems.add(field, 'missing; expected {"role": "model", "parts": [{"text": ...}]}')
        return None
    if completion.get("role") != "model":
        problems.add(f"{field}.role", f"expected 'model', got {str(completion.get('role'))[:20]!r}")
        return None
    parts = _parse_parts(completion, field, problems)
    if parts is None:
        return None
    if any(p.kind != "text" for p in parts):
        problems.add(f"{field}.parts", "a preference answer takes text parts only")
        return None
    return "".join(p.text for p in parts) or None


def _parse_openai_pair(obj: dict, problems: _Problems, line: int) -> Found:
    given = obj.get("input")
    prompt = None
    if not isinstance(given, dict) or "messages" not in given:
        problems.add("input.messages", "missing; expected the prompt's messages, ending with the user's")
    else:
        inner = _Problems()
        prompt, roles = _parse_openai(given, inner, line)
        _prompt_ends_with_user(prompt, roles, "messages", inner)
        for f, m in inner.items:
            problems.add(f"input.{f}", m)
    chosen = _openai_answer(obj, "preferred_output", problems)
    rejected = _openai_answer(obj, "non_preferred_output", problems)
    if prompt is None or chosen is None or rejected is None:
        return None
    return prompt, chosen, rejected


def _openai_answer(obj: dict, key: str, problems: _Problems, role: str = "assistant") -> Answer | None:
    """One answer given as a list of one assistant message (OpenAI, conversational TRL) or, for TRL, a string."""
    if key not in obj:
        problems.add(key, "missing; a pair needs both answers")
        return None
    value = obj[key]
    if isinstance(value, str) and key in ("chosen", "rejected"):
        return (value, key) if value.strip() else _none(problems, key, "empty text")
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        return _none(problems, key, f'expected a list of one message {{"role": "{role}", "content": ...}}')
    if value[0].get("role") != role:
        return _none(problems, f"{key}[0].role", f"expected {role!r}, got {str(value[0].get('role'))[:20]!r}")
    text = _openai_content(value[0].get("content"), f"{key}[0].content", problems)
    return None if text is None else (text, f"{key}[0].content")


def _none(problems: _Problems, field: str, message: str) -> None:
    problems.add(field, message)
    return None


def _parse_trl_pair(obj: dict, problems: _Problems, line: int) -> Found:
    given = obj.get("prompt")
    prompt = None
    if isinstance(given, str):
        if given.strip():
            prompt = Example((Turn("user", (Part("text", text=given),)),), line=line)
        else:
            problems.add("prompt", "empty text")
    elif isinstance(given, list):
        inner = _Problems()
        prompt, roles = _parse_openai({"messages": given}, inner, line)
        _prompt_ends_with_user(prompt, roles, "messages", inner)
        for f, m in inner.items:
            problems.add(f.replace("messages", "prompt", 1), m)
    else:
        problems.add("prompt", "missing; expected the prompt as text or as a list of messages")
    chosen = _openai_answer(obj, "chosen", problems)
    rejected = _openai_answer(obj, "rejected", problems)
    if prompt is None or chosen is None or rejected is None:
        return None
    return prompt, chosen, rejected
