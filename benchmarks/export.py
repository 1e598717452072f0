"""GGUF export of the demo's tuned model: export time, file size and answer agreement per quant, one run.

    python benchmarks/export.py --tuned DIR                 # a tuned model directory (the demo's: tunery demo)
    python benchmarks/export.py --epochs 1                  # tune the demo's LoRA first (minutes on a CPU)
    python benchmarks/export.py --tuned DIR --llama-server  # also run each GGUF in llama.cpp's llama-server

Rows: the baseline, tunery's own model (the LoRA merged, fp32 transformers), then one row per quant (f16, q8_0,
q4_0, and q4_k_m where ``llama-quantize`` is on PATH): the seconds ``export_gguf`` took, the file size, and on the
demo's 80 held-out tickets (their own system instruction, greedy, unconstrained, up to 16 tokens) the answers read
back from the GGUF by transformers (``gguf_file=``, dequantized to fp32): how many equal the baseline's and how
many are right. With ``--llama-server``, each GGUF is also served by ``llama-server --jinja`` (its own chat template
from the GGUF) and asked the same tickets over /v1/chat/completions: agreement, accuracy, and how many answers
ended at the end-of-turn token (finish_reason "stop").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from tunery.data.formats import parse_example
from tunery.demo import dataset_paths
from tunery.hardware import cpu_kind
from tunery.models.export import K_QUANTS, LLAMA_QUANTIZE, export_gguf
from tunery.models.loading import load_tokenizer
from tunery.models.tuned import load_tuned

MAX_TOKENS = 16


def tickets() -> list[Any]:
    _, test = dataset_paths()
    return [parse_example(json.loads(line), n)[0] for n, line in enumerate(test.read_text().splitlines(), 1)]


def greedy(model: Any, tokenizer: Any, examples: list[Any], stops: list[int], batch: int = 8) -> list[str]:
    """Greedy answers, batched with left padding."""
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(examples), batch):
        texts = [
            tokenizer.apply_chat_template(e.prompt().messages(), tokenize=False, add_generation_prompt=True)
            for e in examples[i : i + batch]
        ]
        enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = model.generate(
                **enc, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
            )
        out += [tokenizer.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True).strip() for row in ids]
    return out


def last_logits(model: Any, tokenizer: Any, examples: list[Any]) -> torch.Tensor:
    """The next-token logits after each ticket's prompt (one at a time, no padding)."""
    rows = []
    for e in examples:
        text = tokenizer.apply_chat_template(e.prompt().messages(), tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            rows.append(model(ids).logits[0, -1])
    return torch.stack(rows)


def tune_demo(epochs: int, root: Path) -> Path:
    from tunery.tuning import TuningSpec, tune

    train, _ = dataset_paths()
    spec = TuningSpec(train=str(train), base_model="smollm2-135m-instruct", epochs=epochs,
                      output=str(root / "tuned-model"), display_name="ticket-router")  # fmt: skip
    return tune(spec)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_answers(gguf: Path, examples: list[Any]) -> tuple[list[str], int]:
    """Answers from ``llama-server --jinja`` (greedy), and how many finished at a stop token."""
    port = free_port()
    command = ["llama-server", "-m", str(gguf), "--jinja", "--port", str(port), "-c", "2048", "-t", "2", "-np", "1"]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the server below)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if server.poll() is not None:
                log.seek(0)
                raise SystemExit(f"llama-server ended before it served {gguf.name}:\n{log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        answers, stopped = [], 0
        for e in examples:
            body = {"messages": e.prompt().messages(), "temperature": 0, "max_tokens": MAX_TOKENS, "top_k": 1}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as r:
                choice = json.loads(r.read())["choices"][0]
            answers.append(choice["message"]["content"].strip())
            stopped += choice["finish_reason"] == "stop"
        return answers, stopped
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tuned", type=Path, help="a tuned model directory (LoRA or full)")
    parser.add_argument("--epochs", type=int, default=1, help="without --tuned: tune the demo LoRA this long")
    parser.add_argument("--quants", default="f16,q8_0,q4_0,q4_k_m")
    parser.add_argument("--llama-server", action="store_true", help="also answer in llama.cpp's llama-server")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="tunery-export-bench-"))
    tuned = args.tuned or tune_demo(args.epochs, work)
    examples = tickets()
    gold = [e.target for e in examples]
    tokenizer = load_tokenizer(tuned)
    stops = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")})
    model, _ = load_tuned(tuned)
    model = model.merge_and_unload().eval() if hasattr(model, "merge_and_unload") else model.eval()
    started = time.monotonic()
    reference = last_logits(model, tokenizer, examples[:8])
    baseline = greedy(model, tokenizer, examples, stops)
    print(f"baseline answered {len(examples)} tickets in {time.monotonic() - started:.0f} s", flush=True)
    del model
    rows = [
        ["tunery (merged LoRA, fp32 transformers)", "-", "-", "0", "80/80", f"{_right(baseline, gold)}/80", "", "", ""]
    ]
    for quant in args.quants.split(","):
        if quant in K_QUANTS and shutil.which(LLAMA_QUANTIZE) is None:
            rows.append([quant, "skipped", f"{LLAMA_QUANTIZE} not on PATH", "", "", "", "", "", ""])
            continue
        result = export_gguf(tuned, work / quant, quant=quant)
        row = [quant, f"{result.seconds:.1f}", f"{result.files[result.gguf.name] / 1e6:.1f}"]
        if quant in K_QUANTS:  # transformers cannot dequantize every K-quant tensor type: llama.cpp alone reads it
            row += ["-", "-", "-"]
        else:
            from transformers import AutoModelForCausalLM

            back = AutoModelForCausalLM.from_pretrained(str(result.gguf.parent), gguf_file=result.gguf.name,
                                                        dtype=torch.float32).eval()  # fmt: skip
            diff = (last_logits(back, tokenizer, examples[:8]) - reference).abs().max().item()
            answers = greedy(back, tokenizer, examples, stops)
            row += [f"{diff:.3f}", f"{_same(answers, baseline)}/80", f"{_right(answers, gold)}/80"]
            del back
        if args.llama_server:
            answers, stopped = llama_server_answers(result.gguf, examples)
            row += [f"{_same(answers, baseline)}/80", f"{_right(answers, gold)}/80", f"{stopped}/80"]
        else:
            row += ["", "", ""]
        rows.append(row)
        print(" | ".join(row), flush=True)
    header = [
        "weights", "export s", "MB", "max abs logit diff (8 tickets)", "same as tunery (transformers)",
        "right (transformers)", "same as tunery (llama.cpp)", "right (llama.cpp)", "stopped at end of turn (llama.cpp)",
    ]  # fmt: skip
    print(f"\nsmollm2-135m-instruct demo LoRA, CPU {cpu_kind()}, torch threads {torch.get_num_threads()}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    shutil.rmtree(work, ignore_errors=True)


def _same(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def _right(answers: list[str], gold: list[str]) -> int:
    return sum(x == y for x, y in zip(answers, gold, strict=True))


if __name__ == "__main__":
    main()
