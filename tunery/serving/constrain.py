"""Controlled output: answers that always parse as JSON matching a schema, or name one of a closed set.

Gemini's ``generationConfig.responseMimeType`` picks the form: ``application/json`` (with an optional
``responseSchema`` in Gemini's OpenAPI subset, or ``responseJsonSchema``, plain JSON Schema) or
``text/x.enum`` (a ``responseSchema`` of type STRING with an ``enum``: the answer is one of its values).
Decoding is constrained by llguidance (Rust, no dependencies): at every step the model may only choose
tokens that keep the answer a prefix of a valid one, and it can only stop where the answer is complete.

    constraint = compile_constraint(config, tokenizer)      # None for text/plain
    allowed = constraint.mask(vocab_size)                   # torch.BoolTensor of the next tokens allowed
    constraint.advance(token_id); constraint.is_finished()

A constraint also watches its ``maxOutputTokens``: when what is left of the budget is about what the
shortest completion from here needs, it writes that completion (close the string, the open arrays and
objects, the required keys with the smallest values), so the answer still parses instead of being cut.

The checks of a request's schema (``config_problems``) import neither torch nor llguidance: the API
process runs them. ``ConstrainedLogits`` applies constraints inside ``transformers``' ``generate``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunery.errors import ModelError

if TYPE_CHECKING:
    import torch

    from tunery.serving.gemini import GenerationConfig

PLAIN, JSON_MIME, ENUM_MIME = "text/plain", "application/json", "text/x.enum"
MIME_TYPES = (PLAIN, JSON_MIME, ENUM_MIME)
TYPES = ("object", "array", "string", "number", "integer", "boolean")
SCHEMA_FIELDS = (
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems", "properties",
    "required", "propertyOrdering", "minimum", "maximum", "minLength", "maxLength", "anyOf", "example", "default",
)  # fmt: skip
MAX_DEPTH = 16
MAX_NODES = 1000
WRAP_UP_WINDOW = 96  # tokens before the budget's end from which a constraint checks it can still close
WRAP_UP_MARGIN = 24  # close when the shortest completion plus this many tokens no longer fits (at most a
WRAP_UP_SHARE = 4  # quarter of the budget: a short budget leaves the answer to the model, see _margin)
MAX_COMPLETION = 4096
# The order in which a closing completion prefers characters: end strings, objects and arrays first,
# then the smallest values; any other allowed token after these, shortest first.
CLOSING = ('"', '}]",:0f[')  # inside a JSON string, and outside one
MAX_SIMULATED = 512  # structural tokens checked per step near the budget's end
BAN_WINDOW = 48  # ... once what is left is within this many tokens of the shortest completion
REPEATS = 8  # a completion that chose one token this many times running tries another (digits, say)


# --- the schema of a request (torch-free) ------------------------------------------------------------------


def config_problems(
    mime_type: str | None, schema: Any, json_schema: Any, field: str = "generationConfig"
) -> list[tuple[str, str]]:
    """Every problem of a request's controlled-output fields, as ``(field, message)``."""
    problems: list[tuple[str, str]] = []
    mime = mime_type or PLAIN
    if mime not in MIME_TYPES:
        problems.append((f"{field}.responseMimeType", f"{mime!r}: expected one of {', '.join(MIME_TYPES)}"))
        return problems
    if schema is not None and json_schema is not None:
        problems.append((f"{field}.responseJsonSchema", "give responseSchema or responseJsonSchema, not both"))
    if schema is not None:
        problems += schema_problems(schema, f"{field}.responseSchema")
    if json_schema is not None and not isinstance(json_schema, dict | bool):
        problems.append((f"{field}.responseJsonSchema", "expected a JSON Schema object"))
    if mime == PLAIN and (schema is not None or json_schema is not None):
        problems.append(
            (f"{field}.responseMimeType", f"a response schema needs responseMimeType {JSON_MIME} or {ENUM_MIME}")
        )
    if mime == ENUM_MIME:
        if json_schema is not None:
            problems.append((f"{field}.responseJsonSchema", f"{ENUM_MIME} takes a responseSchema with an enum"))
        elif not isinstance(schema, dict) or not isinstance(schema.get("enum"), list):
            problems.append((f"{field}.responseSchema", f"{ENUM_MIME} needs a responseSchema of type STRING with enum"))
    return problems


def schema_problems(schema: Any, path: str) -> list[tuple[str, str]]:
    """Every problem of a Gemini ``responseSchema`` (its OpenAPI subset), by field path."""
    problems: list[tuple[str, str]] = []
    nodes = [0]
    _check(schema, path, 0, problems, nodes)
    if nodes[0] > MAX_NODES:
        problems.append((path, f"{nodes[0]} schemas in all; at most {MAX_NODES}"))
    return problems


def _check(schema: Any, path: str, depth: int, problems: list[tuple[str, str]], nodes: list[int]) -> None:
    nodes[0] += 1
    if not isinstance(schema, dict):
        problems.append((path, "expected a schema object"))
        return
    if depth > MAX_DEPTH:
        problems.append((path, f"nested more than {MAX_DEPTH} deep"))
        return
    for key in schema:
        if key not in SCHEMA_FIELDS:
            problems.append((f"{path}.{key}", f"unsupported schema field; expected one of {', '.join(SCHEMA_FIELDS)}"))
    kind = _kind(schema)
    if "type" in schema and kind not in TYPES:
        problems.append((f"{path}.type", f"{schema['type']!r}: expected one of {', '.join(t.upper() for t in TYPES)}"))
        return
    if "anyOf" in schema:
        options = schema["anyOf"]
        if not isinstance(options, list) or not options:
            problems.append((f"{path}.anyOf", "expected a non-empty list of schemas"))
        else:
            for i, option in enumerate(options):
                _check(option, f"{path}.anyOf[{i}]", depth + 1, problems, nodes)
    elif kind is None and "enum" not in schema:
        problems.append((f"{path}.type", f"required: one of {', '.join(t.upper() for t in TYPES)}"))
    if "enum" in schema:
        values = schema["enum"]
        if kind not in (None, "string"):
            problems.append((f"{path}.enum", "enum is for STRING schemas"))
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            problems.append((f"{path}.enum", "expected a non-empty list of non-empty strings"))
    if "nullable" in schema and not isinstance(schema["nullable"], bool):
        problems.append((f"{path}.nullable", "expected true or false"))
    _check_bounds(schema, path, ("minimum", "maximum"), (int, float), problems)
    _check_bounds(schema, path, ("minLength", "maxLength"), (int,), problems)
    _check_bounds(schema, path, ("minItems", "maxItems"), (int,), problems)
    if kind == "array":
        if "items" not in schema:
            problems.append((f"{path}.items", "required for an ARRAY schema"))
        else:
            _check(schema["items"], f"{path}.items", depth + 1, problems, nodes)
    if kind == "object":
        _check_object(schema, path, depth, problems, nodes)


def _check_object(schema: dict, path: str, depth: int, problems: list[tuple[str, str]], nodes: list[int]) -> None:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        problems.append((f"{path}.properties", "expected an object of property schemas"))
        return
    for name, sub in properties.items():
        _check(sub, f"{path}.properties.{name}", depth + 1, problems, nodes)
    for key in ("required", "propertyOrdering"):
        names = schema.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append((f"{path}.{key}", "expected a list of property names"))
            continue
        unknown = [n for n in names if n not in properties]
        if unknown:
            problems.append((f"{path}.{key}", f"not in properties: {', '.join(map(repr, unknown))}"))
        if len(set(names)) != len(names):
            problems.append((f"{path}.{key}", "names a property twice"))


def _check_bounds(schema: dict, path: str, keys: tuple[str, str], kinds: tuple[type, ...], problems: list) -> None:
    values: dict[str, float] = {}
    for key in keys:
        if key in schema:
            value: Any = schema[key]
            ok = not isinstance(value, bool) and isinstance(value, kinds)
            if not ok or (float not in kinds and value < 0):
                problems.append((f"{path}.{key}", "expected " + ("a number" if float in kinds else "a whole number")))
            else:
                values[key] = value
    if len(values) == 2 and values[keys[0]] > values[keys[1]]:
        problems.append((f"{path}.{keys[0]}", f"{values[keys[0]]} is more than {keys[1]} {values[keys[1]]}"))


def _kind(schema: dict) -> str | None:
    kind = schema.get("type")
    return kind.lower() if isinstance(kind, str) else None


def to_json_schema(schema: dict) -> dict[str, Any]:
    """A checked Gemini ``responseSchema`` as JSON Schema: lower-case types, ``nullable`` as a null option,
    properties in ``propertyOrdering`` (then the rest), no properties beyond those listed."""
    out: dict[str, Any]
    if "anyOf" in schema:
        out = {"anyOf": [to_json_schema(s) for s in schema["anyOf"]]}
    else:
        kind = _kind(schema) or "string"
        out = {"type": kind}
        if "enum" in schema:
            out["enum"] = list(schema["enum"])
        for key in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"):
            if key in schema:
                out[key] = schema[key]
        if kind == "array":
            out["items"] = to_json_schema(schema["items"])
        if kind == "object":
            properties = schema.get("properties", {})
            first = list(schema.get("propertyOrdering", []))
            order = first + [name for name in properties if name not in first]
            out["properties"] = {name: to_json_schema(properties[name]) for name in order}
            out["required"] = list(schema.get("required", []))
            out["additionalProperties"] = False
    if schema.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


# --- grammars ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grammar:
    """What an answer must be: a llguidance grammar and, for ``describe``, its source."""

    grammar: str
    kind: str  # "json" or "enum"
    source: Any


def grammar_for(config: GenerationConfig) -> Grammar | None:
    """The grammar a generation config asks for; None for free text."""
    mime = config.response_mime_type
    if mime in (None, PLAIN):
        return None
    if mime == ENUM_MIME:
        assert config.response_schema is not None
        return enum_grammar(config.response_schema["enum"])
    if config.response_json_schema is not None:
        return json_grammar(config.response_json_schema, config.json_separators)
    schema = to_json_schema(config.response_schema) if config.response_schema is not None else {}
    return json_grammar(schema, config.json_separators)


def json_grammar(schema: dict[str, Any] | bool, separators: tuple[str, str] | None = None) -> Grammar:
    """JSON matching a JSON Schema: compact (no spaces between tokens), or with ``separators`` (item, key) between
    items and after keys (``", "``, ``": "``: as a tuned model's training answers were written)."""
    from llguidance import LLMatcher

    as_dict = schema if isinstance(schema, dict) else ({} if schema else {"not": {}})  # JSON Schema's true / false
    options: dict[str, Any] = {"whitespace_flexible": False}
    if separators:
        options.update(item_separator=separators[0], key_separator=separators[1])
    text = LLMatcher.grammar_from_json_schema(as_dict, defaults=options)
    return Grammar(text, "json", schema)


def enum_grammar(values: Sequence[str]) -> Grammar:
    """Exactly one of ``values``, nothing around it (``text/x.enum``; evaluation's label sets)."""
    from llguidance import LLMatcher

    if not values:
        raise ModelError("a label set to constrain answers to is empty")
    literals = " | ".join(json.dumps(v) for v in dict.fromkeys(values))
    return Grammar(LLMatcher.grammar_from_lark(f"start: {literals}\n"), "enum", list(values))


def label_config(labels: Sequence[str], max_output_tokens: int) -> dict[str, Any]:
    """The ``generationConfig`` fields that restrict an answer to one of ``labels`` (``--constrain labels``)."""
    return {"responseMimeType": ENUM_MIME, "responseSchema": label_schema(labels), "maxOutputTokens": max_output_tokens}


def label_schema(labels: Sequence[str]) -> dict[str, Any]:
    return {"type": "STRING", "enum": list(dict.fromkeys(labels))}


def kept_constraint(config: GenerationConfig, manifest: dict[str, Any] | None) -> GenerationConfig:
    """``config`` held to what a tuned model keeps in ``tunery.json`` when the request names no responseMimeType:
    its closed label set (``labels``: every answer one of them), else the schema learned from its JSON answers
    (``answerSchema``, written as the answers were spaced). A request that names one, ``text/plain`` included,
    keeps its own (the opt-out)."""
    import dataclasses

    if config.response_mime_type is not None or not manifest:
        return config
    if manifest.get("labels"):
        schema = label_schema(manifest["labels"])
        return dataclasses.replace(config, response_mime_type=ENUM_MIME, response_schema=schema)
    kept = manifest.get("answerSchema")
    if kept:
        separators = tuple(kept["separators"]) if kept.get("separators") else None
        return dataclasses.replace(
            config, response_mime_type=JSON_MIME, response_schema=kept["responseSchema"], json_separators=separators
        )
    return config


# --- decoding --------------------------------------------------------------------------------------------


class _Vocabulary:
    """A tokenizer as llguidance sees it, and each token's rank when a completion must close quickly."""

    def __init__(self, tokenizer: Any) -> None:
        import numpy as np
        from llguidance import LLTokenizer

        from tunery.data.tokenize import end_of_turn_token

        backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else None
        if backend is None:
            raise ModelError(f"controlled output needs a fast (Rust) tokenizer; found {type(tokenizer).__name__}")
        stops = {tokenizer.eos_token_id}
        eot = end_of_turn_token(tokenizer) if getattr(tokenizer, "chat_template", None) else None
        if eot is not None:
            stops.add(tokenizer.convert_tokens_to_ids(eot))
        self.stops = sorted(i for i in stops if i is not None)
        self.ll = LLTokenizer(backend.to_str(), eos_token=self.stops)
        self.size = self.ll.vocab_size
        self.ranks = []
        self.structural = np.zeros(self.size, dtype=bool)
        special = self.ll.is_special_token
        self.pieces = pieces = [b"" if special(i) else self.ll.decode_bytes([i]) for i in range(self.size)]
        for i, raw in enumerate(pieces):
            self.structural[i] = any(byte in raw for byte in b',[{:"')
        for order in CLOSING:
            rank = np.full(self.size, 10**9, dtype=np.int64)
            for i, raw in enumerate(pieces):
                if raw:
                    first = order.find(chr(raw[0])) if raw[0] < 128 else -1
                    if first >= 0:  # the shortest closing token first
                        rank[i] = first * 10**6 + len(raw) * 256 + raw[0]
                    else:  # then the longest other one (a forced key or enum value in one token)
                        rank[i] = len(order) * 10**6 + (1000 - min(len(raw), 999)) * 256 + raw[0]
            rank[self.stops] = -1
            self.ranks.append(rank)


_VOCABULARIES: dict[int, tuple[Any, _Vocabulary]] = {}


def _vocabulary(tokenizer: Any) -> _Vocabulary:
    cached = _VOCABULARIES.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        cached = _VOCABULARIES[id(tokenizer)] = (tokenizer, _Vocabulary(tokenizer))
    return cached[1]


class Constraint:
    """One answer's grammar state: which tokens may come next, and whether the answer is complete."""

    def __init__(self, grammar: Grammar, vocabulary: _Vocabulary, budget: int) -> None:
        from llguidance import LLMatcher

        self.grammar, self.vocabulary, self.budget = grammar, vocabulary, budget
        self.matcher = LLMatcher(vocabulary.ll, grammar.grammar)
        if self.matcher.is_error():
            raise ModelError(f"the response schema cannot be compiled: {self.matcher.get_error()}")
        self.used = 0
        self.plan: list[int] = []  # the closing completion being written, once the budget calls for it
        self.quotes = _Quotes()
        self.closing = 0  # the length of the shortest completion, as last computed
        self.finished = False

    def mask(self, vocab_size: int) -> torch.Tensor:
        """The tokens allowed next, as a bool tensor of ``vocab_size`` (ids past the tokenizer's are never allowed)."""
        import torch

        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        if self.finished or self.matcher.is_stopped():
            allowed[self.vocabulary.stops] = True
            return allowed
        step = self._wrap_up()
        if step is not None:
            allowed[step if step >= 0 else self.vocabulary.stops] = True
            return allowed
        found = self._bits(self.matcher).copy()
        left = self.budget - self.used
        if left <= WRAP_UP_WINDOW and left <= self.closing + BAN_WINDOW:
            self._ban_overruns(found, left)
        bits = torch.from_numpy(found)
        n = min(vocab_size, bits.numel())
        allowed[:n] = bits[:n]
        return allowed

    def advance(self, token_id: int) -> None:
        """Record the token chosen; a stop token ends the answer."""
        self.used += 1
        if self.finished:
            return
        if token_id in self.vocabulary.stops:
            self.finished = True
            return
        if self.plan and self.plan[0] == token_id:
            self.plan.pop(0)
        else:
            self.plan = []
        self.quotes.read(self.vocabulary.pieces[token_id] if token_id < self.vocabulary.size else b"")
        if not self.matcher.consume_token(token_id):
            raise ModelError(f"token {token_id} does not fit the response schema: {self.matcher.get_error()}")

    def is_finished(self) -> bool:
        """Whether the answer is complete and nothing may follow it (a stop token only)."""
        return self.finished or (self.matcher.is_stopped() and self.matcher.is_accepting())

    def _bits(self, matcher: Any) -> Any:
        import numpy as np

        raw = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(raw, bitorder="little")[: self.vocabulary.size].astype(bool)

    def _wrap_up(self) -> int | None:
        """The one token to write now if the budget left is what the shortest completion needs (-1: a stop
        token, the answer being complete), else None."""
        left = self.budget - self.used
        if self.plan:
            return self.plan[0]
        if left > WRAP_UP_WINDOW:
            return None
        completion = self._completion()
        self.closing = len(completion)
        if len(completion) + self._margin() < left:
            return None
        self.plan = completion
        return self.plan[0] if self.plan else -1

    def _margin(self) -> int:
        """How many tokens beyond the shortest completion must be left for the model to keep choosing.

        The takeover writes the same completion whatever the prompt, so it must only come when needed: a fixed
        24 tokens took over from the first token of every answer whose budget was short (evaluation gives the
        longest gold answer plus 8), and every constrained answer was the same label. A label set needs no
        margin: every token that would overrun is banned (``_ban_overruns`` checks them all), so the model
        chooses until the label it is writing only just fits. JSON keeps some, at most a quarter of the budget:
        a string or number token may not shorten the completion, and only structural tokens are checked."""
        if self.grammar.kind == "enum":
            return 1
        return min(WRAP_UP_MARGIN, self.budget // WRAP_UP_SHARE)

    def _ban_overruns(self, bits: Any, left: int) -> None:
        """Near the budget's end, disallow the tokens after which the shortest completion no longer fits what is
        left: the structural ones (a comma, a bracket, a quote...; a comma in an array asks for a whole new item),
        and for a label set every one (a token may lead into a longer label)."""
        import numpy as np

        stops = set(self.vocabulary.stops)
        checked = bits if self.grammar.kind == "enum" else bits & self.vocabulary.structural
        for token in np.nonzero(checked)[0][:MAX_SIMULATED]:
            token = int(token)
            if token in stops:
                continue
            matcher = self.matcher.deep_copy()
            quoted = _Quotes(self.quotes.inside, self.quotes.escaped)
            quoted.read(self.vocabulary.pieces[token])
            if not matcher.consume_token(token) or 1 + len(self._completion(matcher, quoted)) + 1 > left:
                bits[token] = False
        if not bits.any():  # nothing fits any more: the completion from here is the best there is
            plan = self._completion()
            bits[plan[0] if plan else self.vocabulary.stops] = True

    def _completion(self, matcher: Any = None, quoted: _Quotes | None = None) -> list[int]:
        """A short way to a complete answer from here: the tokens the grammar forces, else the allowed token
        that ranks first (a stop token as soon as the answer may end; no token more than ``REPEATS`` times
        running)."""
        import numpy as np

        matcher = matcher.deep_copy() if matcher is not None else self.matcher.deep_copy()
        tokens: list[int] = []
        quoted = quoted or _Quotes(self.quotes.inside, self.quotes.escaped)
        while len(tokens) < MAX_COMPLETION:
            if matcher.is_stopped():
                break
            rank = self.vocabulary.ranks[0 if quoted.inside and self.grammar.kind == "json" else 1]
            bits = self._bits(matcher)
            if len(tokens) >= REPEATS and len(set(tokens[-REPEATS:])) == 1:
                bits[tokens[-1]] = False
            choice = int(np.argmin(np.where(bits, rank, np.iinfo(np.int64).max)))
            if not bits[choice] or choice in self.vocabulary.stops or not matcher.consume_token(choice):
                break
            tokens.append(choice)
            quoted.read(self.vocabulary.pieces[choice])
        return tokens


class _Quotes:
    """Whether JSON text read so far ends inside a string."""

    def __init__(self, inside: bool = False, escaped: bool = False) -> None:
        self.inside, self.escaped = inside, escaped

    def read(self, raw: bytes) -> None:
        for byte in raw:
            if self.escaped:
                self.escaped = False
            elif self.inside and byte == 0x5C:  # backslash
                self.escaped = True
            elif byte == 0x22:  # quote
                self.inside = not self.inside


def compile_constraint(config: GenerationConfig, tokenizer: Any) -> Constraint | None:
    """The constraint for one request's answer; None when its answer is free text."""
    grammar = grammar_for(config)
    if grammar is None:
        return None
    return Constraint(grammar, _vocabulary(tokenizer), config.max_output_tokens)


def is_constrained(config: GenerationConfig) -> bool:
    return config.response_mime_type not in (None, PLAIN)


class ConstrainedLogits:
    """A ``transformers`` logits processor that applies one ``Constraint`` (or None) per batch row.

    ``generate`` calls it with every row's ids so far (prompts left-padded to one width); the last id of
    each row is the token chosen at the previous step, which advances that row's constraint. A row whose
    constraint is finished may only write stop tokens (``generate`` pads it after its first).
    """

    def __init__(self, constraints: Sequence[Constraint | None]) -> None:
        self.constraints = list(constraints)
        self.width: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.width is None:
            self.width = input_ids.shape[1]
        elif input_ids.shape[1] > self.width:
            last = input_ids[:, -1].tolist()
            for constraint, token in zip(self.constraints, last, strict=True):
                if constraint is not None and not constraint.finished:
                    constraint.advance(int(token))
        for row, constraint in enumerate(self.constraints):
            if constraint is not None:
                allowed = constraint.mask(scores.shape[1]).to(scores.device)
                scores[row] = scores[row].masked_fill(~allowed, float("-inf"))
        return scores


def logits_processors(configs: Sequence[GenerationConfig], tokenizer: Any) -> dict[str, Any]:
    """``generate`` keyword arguments that constrain each row as its config asks; {} when none is constrained."""
    if not any(is_constrained(c) for c in configs):
        return {}
    from transformers import LogitsProcessorList

    constraints = [compile_constraint(c, tokenizer) for c in configs]
    return {"logits_processor": LogitsProcessorList([ConstrainedLogits(constraints)])}


def check_answer(config: GenerationConfig, text: str) -> str | None:
    """Why ``text`` is not an answer ``config`` allows (None: it is). For tests and batch checks."""
    grammar = grammar_for(config)
    if grammar is None:
        return None
    if grammar.kind == "enum":
        return None if text in grammar.source else f"{text!r} is not one of {grammar.source}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    return _mismatch(value, grammar.source if isinstance(grammar.source, dict) else {}, "$")


def _mismatch(value: Any, schema: dict[str, Any], path: str) -> str | None:
    """A small validator of the JSON Schema that ``to_json_schema`` writes (so tests need no other library)."""
    if "anyOf" in schema:
        if all(_mismatch(value, s, path) for s in schema["anyOf"]):
            return f"{path}: matches none of anyOf"
        return None
    kind = schema.get("type")
    checks = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    if kind is not None and not checks.get(kind, False):
        return f"{path}: expected {kind}, got {value!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} not in enum"
    if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
        return f"{path}: {value!r} out of range"
    size = len(value) if isinstance(value, str | list) else None
    low, high = ("minLength", "maxLength") if isinstance(value, str) else ("minItems", "maxItems")
    if size is not None and (size < schema.get(low, 0) or size > schema.get(high, size)):
        return f"{path}: length {size} outside {low}/{high}"
    if kind == "array":
        for i, item in enumerate(value):
            found = _mismatch(item, schema.get("items", {}), f"{path}[{i}]")
            if found:
                return found
    if kind == "object":
        properties = schema.get("properties", {})
        missing = [n for n in schema.get("required", []) if n not in value]
        extra = [n for n in value if n not in properties] if schema.get("additionalProperties") is False else []
        if missing or extra:
            return f"{path}: missing {missing}, unexpected {extra}"
        for name, item in value.items():
            found = _mismatch(item, properties.get(name, {}), f"{path}.{name}")
            if found:
                return found
    return None
