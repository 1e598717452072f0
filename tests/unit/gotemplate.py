"""A small renderer for the Go text/template subset an Ollama TEMPLATE uses, to check tunery's Modelfiles.

Actions: ``{{ .Field }}``, ``{{ $v }}``, ``{{ $v := expr }}``, ``{{ $v = expr }}``, ``{{ if expr }}`` with
``{{ else if expr }}`` / ``{{ else }}``, ``{{ range expr }}``, ``{{ end }}``; expressions call ``eq``, ``ne``, ``and``,
``or``, ``not``, ``index`` on fields (``.Role``, ``(index .Messages 0).Role``), variables, strings and integers.
Written from Go's documentation, independently of the code that writes the templates.
"""

from __future__ import annotations

import json
import re
from typing import Any

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|:=|=|\$\w*|\.\w+|\d+|[A-Za-z_]\w*)')


def parse(text: str) -> list[Any]:
    """The template as a tree: ("text", s), ("out", tokens), ("set", name, tokens), ("if", branches, else),
    ("range", tokens, body)."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in ACTION.finditer(text):
        before = text[pos : m.start()]
        if m.group(1):
            before = before.rstrip()
        pieces.append(("text", before))
        pieces.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    pieces.append(("text", text[pos:]))
    body, rest = _block(pieces, 0)
    assert rest == len(pieces), "an {{ end }} without its block"
    return body


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        assert m, f"cannot read {text[pos:]!r}"
        out.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _block(pieces: list[tuple[str, str]], i: int) -> tuple[list[Any], int]:
    body: list[Any] = []
    while i < len(pieces):
        kind, text = pieces[i]
        if kind == "text":
            body.append(("text", text))
            i += 1
            continue
        words = _tokens(text)
        if words[0] in ("end", "else"):
            return body, i
        if words[0] == "if":
            branches, otherwise = [], []
            cond = words[1:]
            while True:
                inner, i = _block(pieces, i + 1)
                branches.append((cond, inner))
                words = _tokens(pieces[i][1])
                if words[0] == "end":
                    break
                if words[:2] == ["else", "if"]:
                    cond = words[2:]
                    continue
                otherwise, i = _block(pieces, i + 1)
                break
            body.append(("if", branches, otherwise))
            i += 1
        elif words[0] == "range":
            inner, i = _block(pieces, i + 1)
            body.append(("range", words[1:], inner))
            i += 1
        elif len(words) > 2 and words[0].startswith("$") and words[1] in (":=", "="):
            body.append(("set", words[0], words[2:]))
            i += 1
        else:
            body.append(("out", words))
            i += 1
    return body, i


def _truth(value: Any) -> bool:
    return bool(value)


FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "index": lambda a, *keys: _index(a, keys),
}


def _index(value: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        value = value[key]
    return value


class _Eval:
    def __init__(self, words: list[str], dot: Any, variables: dict[str, Any]) -> None:
        self.words, self.i, self.dot, self.vars = words, 0, dot, variables

    def call(self, stop: str | None = None) -> Any:
        head = self.words[self.i]
        if head in FUNCS or head in ("and", "or"):
            self.i += 1
            args = []
            while self.i < len(self.words) and self.words[self.i] != stop:
                args.append(self.term())
            if head == "and":
                return next((a for a in args if not _truth(a)), args[-1])
            if head == "or":
                return next((a for a in args if _truth(a)), args[-1])
            return FUNCS[head](*args)
        return self.term()

    def term(self) -> Any:
        word = self.words[self.i]
        self.i += 1
        if word == "(":
            value = self.call(stop=")")
            assert self.words[self.i] == ")"
            self.i += 1
        elif word.startswith("."):
            value = self.dot[word[1:]]
        elif word.startswith("$"):
            value = self.vars[word]
        elif word.startswith('"'):
            value = json.loads(word)
        elif word.isdigit():
            value = int(word)
        else:
            raise AssertionError(f"unknown word {word!r}")
        while self.i < len(self.words) and self.words[self.i].startswith(".") and self.words[self.i - 1] == ")":
            value = value[self.words[self.i][1:]]
            self.i += 1
        return value


def _value(words: list[str], dot: Any, variables: dict[str, Any]) -> Any:
    return _Eval(words, dot, variables).call()


def _run(body: list[Any], dot: Any, variables: dict[str, Any], out: list[str]) -> None:
    for node in body:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_value(node[1], dot, variables)))
        elif node[0] == "set":
            variables[node[1]] = _value(node[2], dot, variables)
        elif node[0] == "if":
            for cond, inner in node[1]:
                if _truth(_value(cond, dot, variables)):
                    _run(inner, dot, variables, out)
                    break
            else:
                _run(node[2], dot, variables, out)
        elif node[0] == "range":
            for item in _value(node[1], dot, variables) or []:
                _run(node[2], item, variables, out)


def render(template: str, data: dict[str, Any]) -> str:
    out: list[str] = []
    _run(parse(template), data, {}, out)
    return "".join(out)
