"""Dataset validation: every problem of a file at once, by line and field, as ``FILE:LINE: field: message``.

The corpus is ``tests/data/bad/``: one file per kind of problem, a mixed file, and a non-UTF-8 file.

    .venv/bin/python -m pytest tests/unit/test_validation.py -q
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import tracemalloc

import pytest

from tunery.data import Problem, read_examples
from tunery.data.validation import MAX_DEPTH, MAX_MESSAGE_CHARS, MAX_NUMBER_DIGITS, MAX_PROBLEMS
from tunery.errors import ConfigError, DatasetError

# file → every (line, field, message substring) it must report, in order, and the lines that parse.
EXPECTED = {
    "invalid_json.jsonl": (
        [(2, "line", "invalid JSON: Expecting ',' delimiter"), (3, "line", "invalid JSON: Expecting property name")],
        [1, 4],
    ),
    "not_object.jsonl": (
        [
            (1, "line", "expected a JSON object, got list"),
            (2, "line", "expected a JSON object, got str"),
            (3, "line", "expected a JSON object, got int"),
        ],
        [4],
    ),
    "unknown_role.jsonl": (
        [
            (1, "contents[1].role", "unknown role 'assistant'; expected 'user' or 'model' (the Gemini form says"),
            (2, "contents[1].role", "unknown role 'bot'; expected 'user' or 'model'"),
            (3, "messages[1].role", "unknown role 'model'; expected 'system', 'user' or 'assistant' (the OpenAI form"),
            (4, "messages[0].role", "unknown role 'human'"),
        ],
        [],
    ),
    "empty_text.jsonl": (
        [
            (1, "contents[0].parts[0].text", "empty text"),
            (2, "messages[1].content", "empty text"),
            (3, "contents[1].parts[0].text", "text must be a string"),
        ],
        [],
    ),
    "missing_parts.jsonl": (
        [
            (1, "contents[0].parts", "missing or empty"),
            (2, "contents[0].parts", "missing or empty"),
            (3, "messages[0].content", "missing; expected a string"),
            (4, "systemInstruction.parts", "missing or empty"),
        ],
        [],
    ),
    "no_model_turn.jsonl": (
        [
            (1, "contents", "no model turn at the end"),
            (2, "contents", "no model turn at the end"),
            (3, "messages", "no model turn at the end"),
        ],
        [],
    ),
    "not_alternating.jsonl": (
        [
            (1, "contents[1].role", "two user turns in a row; roles must alternate"),
            (2, "messages[3].role", "two model turns in a row; roles must alternate"),
            (3, "contents[0].role", "the first turn must be the user's"),
        ],
        [],
    ),
    # a turn whose text is at fault still counts for turn order; a turn with no known role stops that check
    "broken_and_out_of_order.jsonl": (
        [
            (1, "contents[1].parts", "missing or empty"),
            (1, "contents[2].role", "two model turns in a row; roles must alternate"),
            (2, "messages[0].content", "empty text"),
            (2, "messages[2].role", "two user turns in a row; roles must alternate"),
            (3, "contents[0].parts[0].text", "empty text"),
            (3, "contents[0].role", "the first turn must be the user's"),
            (3, "contents", "no model turn at the end"),
            (4, "contents[0].parts", "missing or empty"),
            (4, "contents[1].role", "unknown role 'bot'"),
        ],
        [],
    ),
    "system_not_first.jsonl": ([(1, "messages[1].role", "a system message may only come first")], [2]),
    "image_part.jsonl": (
        [
            (1, "contents[0].parts[1].inlineData", "smollm2-135m-instruct takes text only, not image (image/png)"),
            # a text model reads a PDF as its text; this one is outside the dataset folder
            (2, "contents[0].parts[0].fileData.fileUri", "outside the dataset folder and the data root: file:///"),
        ],
        [3],
    ),
    "empty.jsonl": ([(0, "file", "no examples; the file is empty")], []),
    "blank_lines.jsonl": ([(0, "file", "no examples; the file is empty")], []),
    "mixed.jsonl": (
        [
            (3, "line", "invalid JSON"),
            (5, "line", "expected 'contents' (Gemini form) or 'messages' (OpenAI form); found keys: completion"),
            (6, "contents[0].parts[0].text", "empty text"),
            (6, "contents[1].role", "unknown role 'assistant'"),
            (8, "contents", "no model turn at the end"),
            (9, "contents", "must be a non-empty list of turns"),
        ],
        [1, 4, 10],
    ),
}


def bad(data_dir, name):
    return data_dir / "bad" / name


def assert_problems(report, expected):
    got = [(p.line, p.field, p.message) for p in report.problems]
    assert len(got) == len(expected), "\n".join(map(str, report.problems))
    for (line, field, message), (want_line, want_field, want_message) in zip(got, expected):
        assert (line, field) == (want_line, want_field), f"{line}: {field}: {message}"
        assert want_message in message


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_problem_of_a_file_is_reported(data_dir, name):
    path = bad(data_dir, name)
    expected, valid_lines = EXPECTED[name]
    report = read_examples(path, model_id="smollm2-135m-instruct", modalities=("text",))
    assert_problems(report, expected)
    assert [e.line for e in report.examples] == valid_lines
    assert not report.ok and report.errors == report.problems and not report.warnings
    for p in report.problems:
        assert str(p) == f"{path}:{p.line}: {p.field}: {p.message}"


def test_column_of_invalid_json_is_where_the_line_breaks(data_dir):
    path = bad(data_dir, "invalid_json.jsonl")
    lines = path.read_text().splitlines()
    report = read_examples(path)
    # Line 2 stops short of its closing bracket: the error is at the end of the line, not column 1.
    assert report.problems[0].message.endswith(f"(column {len(lines[1]) + 1})")
    assert report.problems[1].message.endswith("(column 2)")  # {'contents': ...} — single quotes


def test_non_utf8_bytes_are_reported_and_other_lines_parse(data_dir):
    path = bad(data_dir, "not_utf8.jsonl")
    at = path.read_bytes().splitlines()[1].index(b"\xe9")  # "café" in Latin-1
    report = read_examples(path)
    assert_problems(report, [(2, "line", f"not UTF-8 text (byte {at})")])
    assert [e.line for e in report.examples] == [1, 3]


def test_mixed_file_parses_valid_lines_and_skips_blank_ones(data_dir):
    report = read_examples(bad(data_dir, "mixed.jsonl"))
    assert [e.target for e in report.examples] == ["card_arrival", "transfer_failed", "card_arrival"]
    assert report.examples[2].system == "Route the ticket."
    assert not any(p.line in (2, 7) for p in report.problems)  # blank lines


def test_raise_for_errors_lists_every_problem(data_dir):
    path = bad(data_dir, "mixed.jsonl")
    report = read_examples(path)
    with pytest.raises(DatasetError) as caught:
        report.raise_for_errors()
    assert caught.value.problems == report.errors
    text = str(caught.value).splitlines()
    assert text[0] == f"{path}: 6 problems; nothing was tuned"
    assert text[1:] == [str(p) for p in report.problems]


def test_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_examples(tmp_path / "nope.jsonl")


def test_valid_fixtures_have_no_problems(data_dir, tiny_tokenizer):
    for name in ("classify_gemini.jsonl", "classify_openai.jsonl", "multiturn.jsonl"):
        report = read_examples(data_dir / name, tokenizer=tiny_tokenizer("chatml"), max_length=512)
        assert report.ok and not report.problems
        assert len(report.examples) == len(report.encoded) == 10


def test_too_long_examples_warn_or_fail_by_what_truncation_leaves(data_dir, tiny_tokenizer):
    path = bad(data_dir, "too_long.jsonl")
    tokenizer = tiny_tokenizer("chatml")
    full = read_examples(path, tokenizer=tokenizer, max_length=512)
    assert full.ok and not full.problems
    lengths = [e.full_length for e in full.encoded]
    # Line 1 has a long answer, line 2 a long question: both exceed 32 tokens, line 3 does not.
    max_length = 32
    assert lengths[0] > max_length and lengths[1] > max_length >= lengths[2]
    assert full.encoded[1].input_tokens > max_length  # the answer of line 2 starts past the cut

    report = read_examples(path, tokenizer=tokenizer, max_length=max_length)
    assert_problems(
        report,
        [
            (
                1,
                "contents",
                f"example is {lengths[0]} tokens, longer than maxLength 32; "
                f"it is truncated ({lengths[0] - 32} tokens dropped)",
            ),
            (2, "contents", "trains zero tokens after truncation to maxLength 32"),
        ],
    )
    warning, error = report.problems
    assert (warning.severity, error.severity) == ("warning", "error")
    assert report.warnings == [warning] and report.errors == [error]
    assert str(warning) == f"{path}:1: contents: warning: {warning.message}"
    # The truncated example is kept (and still trains), the empty one is not.
    assert [e.line for e in report.examples] == [1, 3]
    assert report.encoded[0].truncated and report.encoded[0].trained_tokens > 0
    assert len(report.encoded[0].input_ids) == 32


def test_only_warnings_do_not_raise(tmp_path, data_dir, tiny_tokenizer):
    lines = bad(data_dir, "too_long.jsonl").read_text().splitlines()
    path = tmp_path / "long.jsonl"
    path.write_text(lines[0] + "\n" + lines[2] + "\n")
    report = read_examples(path, tokenizer=tiny_tokenizer("chatml"), max_length=32)
    assert report.ok and len(report.warnings) == 1
    report.raise_for_errors()  # warnings never stop a run


def test_problem_to_dict():
    p = Problem("f.jsonl", 3, "contents", "empty", "warning")
    assert p.to_dict() == {"line": 3, "field": "contents", "message": "empty", "severity": "warning"}
    assert str(Problem("f.jsonl", 3, "line", "bad")) == "f.jsonl:3: line: bad"


# --- hostile input: each line a problem at its number, quickly, in bounded memory -----------------------------

GOOD = json.dumps(
    {"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "ok"}]}]}
)
HOSTILE = {  # a line → (field, message substring)
    "[" * 2000 + "]" * 2000: ("line", f"JSON nested more than {MAX_DEPTH} deep"),
    '{"contents": ' + "[" * 5000 + "]" * 5000 + "}": ("line", f"JSON nested more than {MAX_DEPTH} deep"),
    "[" * 200_000: ("line", f"JSON nested more than {MAX_DEPTH} deep"),
    '{"contents": "' + "[" * 5000 + '"}': ("contents", "must be a non-empty list"),  # brackets in a string
    '{"n": ' + "9" * 5000 + "}": ("line", f"a number with 5000 digits; at most {MAX_NUMBER_DIGITS}"),
    '{"n": -' + "9" * 5000 + "}": ("line", "a number with 5001 digits"),
    '{"n": NaN}': ("line", "NaN is not JSON"),
    '{"n": -Infinity}': ("line", "-Infinity is not JSON"),
    '{"contents": "\x00"}': ("line", "invalid JSON: Invalid control character"),
    GOOD.replace("hi", "\\ud800"): ("contents[0].parts[0].text", "a lone surrogate U+D800 at character 0"),
    GOOD.replace("ok", "x\\udfff"): ("contents[1].parts[0].text", "a lone surrogate U+DFFF at character 1"),
    '{"messages": [{"role": "user", "content": "\\udbff"}, {"role": "assistant", "content": "ok"}]}': (
        "messages[0].content",
        "lone surrogate U+DBFF",
    ),
    '{"\\ud800": 1}': ("line", "found keys: \\ud800"),
    GOOD.replace('{"text": "hi"}', '{"inlineData": {"mimeType": ["image/png"], "data": "x"}}'): (
        "contents[0].parts[0].inlineData.mimeType",
        "expected a MIME type",
    ),
    json.dumps({f"k{i}": i for i in range(100_000)}): ("line", "found keys: k0, k1, k10,"),
}


@pytest.mark.parametrize("line", list(HOSTILE), ids=lambda line: line[:30])
def test_hostile_lines_are_problems_at_their_line(line):
    data = f"{GOOD}\n{line}\n{GOOD}\n".encode("utf-8", "surrogatepass")
    started = time.monotonic()
    report = read_examples(io.BytesIO(data), name="hostile.jsonl")
    assert time.monotonic() - started < 2
    field, message = HOSTILE[line]
    assert [(p.line, p.field) for p in report.problems] == [(2, field)], report.problems
    problem = report.problems[0]
    assert message in problem.message and len(problem.message) <= MAX_MESSAGE_CHARS
    str(problem).encode("utf-8")  # printable and encodable: no lone surrogate reaches a terminal or a JSON reply
    assert [e.line for e in report.examples] == [1, 3]


def test_a_line_over_the_bound_is_skipped_unread_in_bounded_memory():
    limit = 2**20
    huge = b'{"contents": [{"role": "user", "parts": [{"text": "' + b"x" * (20 * limit) + b'"}]}]}'
    data = b"\n".join([GOOD.encode(), huge, GOOD.encode(), huge]) + b"\n"  # the last line ends the file too
    tracemalloc.start()
    started = time.monotonic()
    report = read_examples(io.BytesIO(data), name="big.jsonl", max_line_bytes=limit)
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = f"line is {len(huge)} bytes, longer than the limit of {limit} (TUNERY_MAX_LINE_BYTES)"
    assert [(p.line, p.field, p.message) for p in report.problems] == [(2, "line", message), (4, "line", message)]
    assert [e.line for e in report.examples] == [1, 3]
    assert elapsed < 2 and peak < 4 * limit, (elapsed, peak)  # the 20 MiB line is never held whole


def test_a_line_at_the_bound_is_read_and_an_example_over_the_text_bound_is_refused():
    text = "word " * 2000
    line = json.dumps(
        {"contents": [{"role": "user", "parts": [{"text": text}]}, {"role": "model", "parts": [{"text": "ok"}]}]}
    )
    exact = read_examples(io.BytesIO(line.encode() + b"\n"), max_line_bytes=len(line), max_example_chars=len(text) + 2)
    assert exact.ok and len(exact.examples) == 1  # the newline is not counted
    over = read_examples(io.BytesIO(line.encode()), max_line_bytes=len(line) - 1)
    assert [p.message for p in over.problems][0].startswith(f"line is {len(line)} bytes")
    refused = read_examples(io.BytesIO(line.encode()), max_example_chars=1000)
    assert [(p.field, p.message) for p in refused.problems] == [
        ("contents", f"the example holds {len(text) + 2} characters of text; at most 1000 (TUNERY_MAX_EXAMPLE_CHARS)")
    ]


def test_the_bounds_are_settings(monkeypatch):
    monkeypatch.setenv("TUNERY_MAX_LINE_BYTES", "100")
    report = read_examples(io.BytesIO(("x" * 101 + "\n").encode()))
    assert "longer than the limit of 100 (TUNERY_MAX_LINE_BYTES)" in report.problems[0].message
    monkeypatch.setenv("TUNERY_MAX_LINE_BYTES", "lots")
    with pytest.raises(ConfigError, match="TUNERY_MAX_LINE_BYTES='lots'"):
        read_examples(io.BytesIO(b"{}\n"))


def test_the_check_stops_after_a_thousand_errors():
    started = time.monotonic()
    report = read_examples(io.BytesIO(b"x\n" * 1_000_000), name="junk.jsonl")
    assert time.monotonic() - started < 2
    assert len(report.errors) == MAX_PROBLEMS + 1
    assert str(report.problems[-1]) == (
        f"junk.jsonl:{MAX_PROBLEMS}: file: stopped at line {MAX_PROBLEMS} after {MAX_PROBLEMS} errors; "
        "the rest of the file was not checked"
    )


def test_a_fifo_and_a_stream_read_like_a_file(tmp_path):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(f"{GOOD}\n{GOOD}\n"))
    writer.start()
    report = read_examples(fifo)
    writer.join(timeout=10)
    assert report.ok and len(report.examples) == 2 and report.path == str(fifo)
    with pytest.raises(DatasetError, match="is a directory"):
        read_examples(tmp_path)


def test_a_streaming_check_keeps_counts_not_examples(data_dir, tiny_tokenizer):
    """``keep=False`` (the upload checker, ``tunery datasets``): the same count and statistics as a kept read, in
    memory that does not grow with the file; a deadline stops it and says where."""
    from tunery.data.stats import tuning_data_stats

    lines = (data_dir / "classify_gemini.jsonl").read_bytes() * 20
    kept = read_examples(io.BytesIO(lines), tokenizer=tiny_tokenizer())
    streamed = read_examples(io.BytesIO(lines), tokenizer=tiny_tokenizer(), keep=False)
    assert streamed.count == kept.count == len(kept.encoded) == 200 and streamed.examples == streamed.encoded == []
    assert streamed.tally.stats(3, 8) == tuning_data_stats(kept.encoded, 3, 8)

    def peak(copies: int) -> int:
        data = io.BytesIO((GOOD + "\n").encode() * copies)  # made before tracing: the file, not the check
        tracemalloc.start()
        report = read_examples(data, keep=False)
        found = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert report.count == copies and report.ok
        return found

    small, large = peak(500), peak(5_000)
    assert large < small * 1.5 + 64 * 1024, (small, large)  # 10 times the lines, about the same memory

    stopped = read_examples(io.BytesIO(lines), keep=False, deadline=time.monotonic() - 1)
    assert stopped.stopped_at == (1, 0) and stopped.count == 0 and stopped.ok  # nothing read, so no "empty" error
