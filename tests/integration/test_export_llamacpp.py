"""The exported GGUF in llama.cpp itself (``llama-server``): same greedy answers as tunery, each ending at the
end-of-turn token. Skipped where ``llama-server`` is not on PATH (llama.cpp is never installed in CI).

    PATH=/path/to/llama.cpp/bin:$PATH .venv/bin/python -m pytest tests/integration/test_export_llamacpp.py -q
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tunery.data.formats import parse_example
from tunery.models.export import export_gguf
from tunery.models.loading import load_tokenizer
from tunery.models.tuned import load_tuned

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("llama-server") is None, reason="llama.cpp's llama-server is not on PATH"),
]
MAX_TOKENS = 12


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(port: int, messages: list[dict[str, str]]) -> dict:
    body = {"messages": messages, "temperature": 0, "top_k": 1, "max_tokens": MAX_TOKENS}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["choices"][0]


def _serve(gguf: Path) -> tuple[subprocess.Popen, int]:
    port = _port()
    command = ["llama-server", "-m", str(gguf), "--jinja", "--port", str(port), "-c", "512", "-t", "1", "-np", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return server, port
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise AssertionError("llama-server did not start")


def _tunery_answers(tuned: Path, conversations: list[list[dict[str, str]]]) -> list[tuple[str, bool]]:
    """Greedy answers of the merged model in transformers, and whether each ended at a stop token."""
    model, _ = load_tuned(tuned)
    model = model.merge_and_unload().eval()
    tokenizer = load_tokenizer(tuned)
    stops = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")})
    out = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            got = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=stops, pad_token_id=0)
        new = got[0, ids.shape[1] :]
        out.append((tokenizer.decode(new, skip_special_tokens=True).strip(), int(new[-1]) in stops))
    return out


def test_llama_server_answers_as_tunery_and_stops_at_the_end_of_turn(tuned_lora, data_dir, tmp_path):
    lines = (data_dir / "classify_openai.jsonl").read_text().splitlines()
    conversations = [parse_example(json.loads(line))[0].prompt().messages() for line in lines]
    want = _tunery_answers(tuned_lora, conversations)
    exported = export_gguf(tuned_lora, tmp_path / "f16", quant="f16")
    server, port = _serve(exported.gguf)
    try:
        choices = [_ask(port, messages) for messages in conversations]
    finally:
        server.terminate()
        server.wait(30)
    assert [c["message"]["content"].strip() for c in choices] == [text for text, _ in want]
    assert [c["finish_reason"] == "stop" for c in choices] == [stopped for _, stopped in want]
    assert sum(stopped for _, stopped in want) >= len(want) - 1  # the tuned model ends its answers


@pytest.mark.skipif(shutil.which("llama-quantize") is None, reason="llama.cpp's llama-quantize is not on PATH")
def test_a_q4_k_m_export_is_written_by_llama_quantize_and_served(tuned_lora, data_dir, tmp_path):
    import gguf

    exported = export_gguf(tuned_lora, tmp_path / "q4_k_m", quant="q4_k_m")
    assert sorted(p.name for p in exported.gguf.parent.iterdir()) == [exported.gguf.name]  # the f16 step is gone
    field = gguf.GGUFReader(exported.gguf).fields["general.file_type"]
    assert int(field.parts[field.data[0]][0]) == gguf.LlamaFileType.MOSTLY_Q4_K_M
    line = json.loads((data_dir / "classify_openai.jsonl").read_text().splitlines()[0])
    server, port = _serve(exported.gguf)
    try:
        choice = _ask(port, parse_example(line)[0].prompt().messages())
    finally:
        server.terminate()
        server.wait(30)
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["message"]["content"], str)
