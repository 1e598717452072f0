"""An Ollama ``Modelfile`` whose ``TEMPLATE`` renders what the model's chat template renders.

The chat template (Jinja) is read by rendering it on probe conversations and cutting the text at the probe
contents: what comes before the conversation, each role's opening and closing text, a default system turn added
when a conversation has none (SmolLM2's), whether the system text is folded into the next turn (Gemma's), and the
generation prompt. From these pieces one Go template is written (Ollama's ``.Messages`` form), and checked by
rendering the pieces back on other conversations and comparing with the chat template: a template this reading
does not capture is refused, never written wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunery.errors import ModelError

S, U, A, U2 = "\x01SYS\x01", "\x01USR\x01", "\x01ANS\x01", "\x01USR2\x01"


@dataclass(frozen=True)
class Turns:
    """A chat template cut at its contents."""

    prefix: str  # before any message (a BOS token)
    default_system: str  # added when the first message is not a system one
    system_open: str
    system_close: str  # or, when ``fold``, what separates the system text from the turn it opens
    fold: bool  # the system text opens the next turn instead of a turn of its own
    user_open: str
    user_close: str
    model_open: str
    model_close: str
    generation: str  # the prompt that asks the model to answer


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def read_turns(tokenizer: Any) -> Turns:
    """The template's pieces; a ModelError when it does not have this shape.

    What comes before the first turn is either text the template always writes (a BOS token) or a default system
    turn it writes only when no system message is given; each reading is tried and the one that renders the
    checked conversations as the template does is kept."""
    msg = lambda role, content: {"role": role, "content": content}  # noqa: E731
    try:
        full = _render(tokenizer, [msg("system", S), msg("user", U), msg("assistant", A), msg("user", U2)], True)
        alone = _render(tokenizer, [msg("user", U)], True)
        pair = _render(tokenizer, [msg("user", U), msg("assistant", A)], False)
        model_close = pair[pair.index(A) + len(A) :]
        user_open = _between(full, A + model_close, U2)
        head = alone[: alone.index(U)]
        if not head.endswith(user_open):
            raise ValueError("the first user turn does not open as the later ones do")
    except ValueError as exc:
        raise ModelError(f"cannot write an Ollama TEMPLATE for this chat template ({exc})") from exc
    found: Turns | None = None
    for prefix in dict.fromkeys([head[: len(head) - len(user_open)], ""]):
        turns = _cut(full, alone, pair, prefix, user_open, model_close)
        if turns is not None and _renders_as(tokenizer, turns):
            found = turns
            break
    if found is None:
        raise ModelError("cannot write an Ollama TEMPLATE for this chat template: its turns do not follow one pattern")
    return found


def _cut(full: str, alone: str, pair: str, prefix: str, user_open: str, model_close: str) -> Turns | None:
    """The pieces, given what the template writes before everything (``prefix``); None if they do not fit."""
    if not full.startswith(prefix):
        return None
    user_then_model = _between(pair, U, A)
    user_then_end = alone[alone.index(U) + len(U) :]
    if user_then_model.startswith(model_close) and user_then_end.startswith(model_close):
        user_close = model_close
    else:
        user_close = _common_prefix(user_then_model, user_then_end)
    head = alone[: alone.index(U)]
    default_system = head[len(prefix) : len(head) - len(user_open)]
    system_open = full[len(prefix) : full.index(S)]
    after_system = _between(full, S, U)
    fold = system_open == user_open and not after_system.endswith(user_open)
    system_close = after_system if fold else after_system[: len(after_system) - len(user_open)]
    return Turns(prefix, default_system, system_open, system_close, fold, user_open, user_close,
                 user_then_model[len(user_close) :], model_close, user_then_end[len(user_close) :])  # fmt: skip


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def render(turns: Turns, messages: list[dict[str, str]]) -> str:
    """What the Go template renders for ``messages`` (roles system, user, assistant), generation prompt last."""
    out = [turns.prefix]
    if messages and messages[0]["role"] != "system":
        out.append(turns.default_system)
    system = ""
    for m in messages:
        if m["role"] == "system" and turns.fold:
            system = m["content"] + turns.system_close
            continue
        opened = {"system": turns.system_open, "user": turns.user_open, "assistant": turns.model_open}[m["role"]]
        closed = {"system": turns.system_close, "user": turns.user_close, "assistant": turns.model_close}[m["role"]]
        out += [opened, system, m["content"], closed]
        system = ""
    return "".join(out) + turns.generation


CHECKS = [
    [("system", "Route the ticket."), ("user", "My card never arrived")],
    [("user", "hello")],
    [("system", "Be brief."), ("user", "one"), ("assistant", "two"), ("user", "three")],
]


def _renders_as(tokenizer: Any, turns: Turns) -> bool:
    for conversation in CHECKS:
        messages = [{"role": r, "content": c} for r, c in conversation]
        if render(turns, messages) != _render(tokenizer, messages, True):
            return False
    return True


def _go(text: str) -> str:
    """Literal text inside a Go template (its delimiters cannot occur in it)."""
    if "{{" in text or "}}" in text or '"""' in text:
        raise ModelError(f'cannot write an Ollama TEMPLATE: the chat template\'s text {text!r} holds {{{{, }}}} or """')
    return text


def go_template(turns: Turns) -> str:
    """Ollama's TEMPLATE (Go text/template over ``.Messages``) that renders as ``render`` does."""
    t = turns
    out = [_go(t.prefix)]
    if t.default_system:
        out.append(
            '{{ if and .Messages (ne (index .Messages 0).Role "system") }}' + _go(t.default_system) + "{{ end }}"
        )
    if t.fold:
        out.append('{{ $system := "" }}')
    out.append("{{ range .Messages }}")
    if t.fold:
        out.append('{{ if eq .Role "system" }}{{ $system = .Content }}')
    else:
        out.append('{{ if eq .Role "system" }}' + _go(t.system_open) + "{{ .Content }}" + _go(t.system_close))
    system = "{{ if $system }}{{ $system }}" + _go(t.system_close) + '{{ $system = "" }}{{ end }}' if t.fold else ""
    out.append('{{ else if eq .Role "user" }}' + _go(t.user_open) + system + "{{ .Content }}" + _go(t.user_close))
    out.append("{{ else }}" + _go(t.model_open) + system + "{{ .Content }}" + _go(t.model_close) + "{{ end }}")
    out.append("{{ end }}" + _go(t.generation))
    return "".join(out)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(
    gguf_name: str, tokenizer: Any, stops: list[str], system: str | None, adapter: str | None = None, note: str = ""
) -> str:
    """The Modelfile text: FROM, ADAPTER, TEMPLATE, one stop parameter per end-of-turn string, SYSTEM."""
    lines = [f"# {line}" for line in note.splitlines()] + [f"FROM ./{gguf_name}"]
    if adapter:
        lines.append(f"ADAPTER ./{adapter}")
    lines.append(f'TEMPLATE """{go_template(read_turns(tokenizer))}"""')
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stops]
    if system is not None:
        lines.append(f'SYSTEM """{_go(system)}"""')
    return "\n".join(lines) + "\n"
