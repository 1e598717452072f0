"""Training speed on a Llama-3.2-1B-shaped model (random weights): tunery against TRL SFTTrainer + PEFT.

    python benchmarks/gpu_train.py                    # on a CUDA GPU: sequence 2048, packed, bf16, LoRA and full
    python benchmarks/gpu_train.py --steps 3          # on a CPU: a smaller shape (hidden 256, 4 layers, seq 256)
    python benchmarks/gpu_train.py --shape small      # the CPU shape on a GPU

Every row runs in a process of its own (its peak memory is its own): tunery's loop (``tunery.tuning.loop.fit``
on the model and examples below, packed on CUDA, bf16-mixed where the GPU has bf16) and TRL's SFTTrainer
with PEFT for LoRA (padding-free when flash-attention 2 is installed, bf16, completion-only loss), and TRL
with Liger kernels where ``liger-kernel`` is installed. The examples are the same for every row: random
tokens, lengths spread from a quarter of the sequence to all of it, the first 30 % of each a prompt (no
loss). The first step of each run is a warm-up and is not timed.

tokens/s counts real (non-padding) tokens. MFU = tokens/s x FLOPs per token / the device's peak: FLOPs per
token are 6N + 12·L·h·s for full tuning and 4N + 8·L·h·s for LoRA (no weight gradients), N the
non-embedding parameters, s the mean example length; the peak is the GPU's dense bf16 rate from its name
(H100/H200 989 TFLOP/s, A100 312) or, on a CPU or another GPU, a matmul rate measured now (bounded to 1.5 s).
Peak memory is torch.cuda.max_memory_allocated on a GPU and the process's peak resident memory on a CPU.
Needs the bench extra for the TRL rows: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SHAPES = {
    # Llama-3.2-1B: 16 layers, hidden 2048, 32 heads (8 KV), MLP 8192, vocabulary 128256, tied embeddings
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "seq": 2048,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 1024,
        "vocab_size": 8192,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
        "seq": 256,
    },
}
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
BATCH = 8


def examples(shape: dict[str, Any], count: int, seed: int = 0) -> list[Any]:
    from tunery.data.tokenize import IGNORE_INDEX, Encoded

    rng = random.Random(seed)
    seq, vocab = shape["seq"], shape["vocab_size"]
    out = []
    for _ in range(count):
        n = rng.randint(seq // 4, seq)
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        prompt = int(0.3 * n)
        out.append(Encoded(ids, [IGNORE_INDEX] * prompt + ids[prompt:], n))
    return out


def build_model(shape: dict[str, Any], attention: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    options: dict[str, Any] = {k: v for k, v in shape.items() if k != "seq"}
    options["attn_implementation"] = attention
    config = LlamaConfig(**options)
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    return model.to(dtype)


@functools.lru_cache
def peak_flops(precision: str) -> tuple[float, str]:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, flops in PEAKS.items():
            if key in name:
                return flops, f"{name} dense bf16 spec"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    best, size, deadline = 0.0, 256, time.perf_counter() + 1.5
    while size <= 8192 and time.perf_counter() < deadline:
        a = torch.randn(size, size, dtype=dtype, device=device)
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
        size *= 2
    return best, f"measured {precision} matmul"


def flops_per_token(shape: dict[str, Any], method: str, mean_length: float) -> float:
    h, layers, i = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    n = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + shape["vocab_size"] * h  # + the output layer
    if method == "full":
        return 6 * n + 12 * layers * h * mean_length
    return 4 * n + 8 * layers * h * mean_length


def run_tunery(shape: dict[str, Any], method: str, steps: int, cuda: bool) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    from tunery.tuning.loop import Hooks, Run, fit
    from tunery.tuning.packing import Batcher

    device = torch.device("cuda" if cuda else "cpu")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    attention = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    lora = method == "lora"
    model = build_model(shape, attention, torch.bfloat16 if (bf16 and lora) else torch.float32).to(device)
    core = model
    if lora:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        core = model.get_base_model()
    data = examples(shape, BATCH * (steps + 1))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    timed: dict[str, float] = {}

    def on_metrics(record: dict[str, Any]) -> None:
        if record["step"] == 1:  # after the warm-up step
            if cuda:
                torch.cuda.synchronize()
            timed["start"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        run = Run(
            model=model,
            core=core,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
            train=data,
            validation=[],
            epochs=1,
            batch_size=BATCH,
            micro_batch_tokens=BATCH * shape["seq"],
            seed=0,
            pad_id=0,
            run_dir=Path(tmp),
            precision="bf16-mixed" if bf16 else "fp32",
            checkpoint_seconds=1e9,
            batcher=Batcher(0, device, packing=cuda),
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        fit(run, Hooks(on_metrics=on_metrics))
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - timed["start"]
    tokens = sum(len(e.input_ids) for e in data[BATCH:])  # the steps after the warm-up (the last saves no time)
    return {"tokens_per_second": tokens / seconds, "precision": "bf16" if bf16 else "fp32", "packed": cuda}


def pad_tokenizer() -> Any:
    """A three-token tokenizer for TRL's padding: the examples come tokenized already (random ids)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def run_trl(shape: dict[str, Any], method: str, steps: int, cuda: bool, liger: bool) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    bf16 = cuda and torch.cuda.is_bf16_supported()
    flash = cuda and importlib.util.find_spec("flash_attn") is not None
    data = examples(shape, BATCH * (steps + 1))
    rows = [{"input_ids": e.input_ids, "completion_mask": [int(x >= 0) for x in e.labels]} for e in data]
    timed: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 1:
                if cuda:
                    torch.cuda.synchronize()
                timed["start"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp,
            max_steps=steps + 1,
            per_device_train_batch_size=BATCH,
            learning_rate=1e-4,
            bf16=bf16,
            use_cpu=not cuda,
            padding_free=flash,
            completion_only_loss=True,
            max_length=shape["seq"],
            use_liger_kernel=liger,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            dataloader_drop_last=True,
        )
        model = build_model(shape, "flash_attention_2" if flash else "sdpa", torch.float32)
        peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear") if method == "lora" else None
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=pad_tokenizer(),
            peft_config=peft,
            callbacks=[Clock()],
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - timed["start"]
    tokens = sum(len(e.input_ids) for e in data[BATCH:])
    return {"tokens_per_second": tokens / seconds, "precision": "bf16" if bf16 else "fp32", "packed": flash}


def one(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one row in this process and return its numbers."""
    cuda = torch.cuda.is_available()
    shape = SHAPES[spec["shape"]]
    if spec["engine"] == "tunery":
        result = run_tunery(shape, spec["method"], spec["steps"], cuda)
    else:
        result = run_trl(shape, spec["method"], spec["steps"], cuda, liger=spec["engine"] == "trl+liger")
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b" if cuda else "small")
    parser.add_argument("--steps", type=int, default=20 if cuda else 3, help="Timed optimizer steps (batch 8).")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    engines = ["tunery"]
    if importlib.util.find_spec("trl"):
        engines.append("trl")
        if cuda and importlib.util.find_spec("liger_kernel"):
            engines.append("trl+liger")
    shape = SHAPES[args.shape]
    mean_length = sum(len(e.input_ids) for e in examples(shape, BATCH * (args.steps + 1))) / (BATCH * (args.steps + 1))
    rows: list[tuple[str, str, dict[str, Any] | None, list[str] | None]] = []
    for method in args.methods.split(","):
        for engine in engines:
            spec = {"shape": args.shape, "method": method, "engine": engine, "steps": args.steps}
            done = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                rows.append((method, engine, None, done.stderr.strip().splitlines()[-1:]))
                continue
            rows.append((method, engine, json.loads(done.stdout.strip().splitlines()[-1]), None))
    device = torch.cuda.get_device_name() if cuda else "CPU (no CUDA device)"
    print(f"\nshape {args.shape}: {json.dumps(shape)}")
    print(f"device: {device}; batch {BATCH} examples, mean length {mean_length:.0f} tokens, {args.steps} timed steps")
    if not importlib.util.find_spec("trl"):
        print("TRL rows skipped: trl is not installed (pip install -e '.[bench]')")
    print("\n| method | engine | precision | packed | tokens/s | MFU | peak memory (GiB) | × TRL+PEFT |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    source = "nothing (no row finished)"
    for method, engine, result, error in rows:
        if result is None:
            print(f"| {method} | {engine} | failed: {' '.join(error or [])} | | | | | |")
            continue
        peak, source = peak_flops(result["precision"])
        mfu = result["tokens_per_second"] * flops_per_token(shape, method, mean_length) / peak
        trl = next((r for m, e, r, _ in rows if m == method and e == "trl" and r), None)
        ratio = f"{result['tokens_per_second'] / trl['tokens_per_second']:.2f}" if trl else ""
        print(
            f"| {method} | {engine} | {result['precision']} | {'yes' if result['packed'] else 'no'} | "
            f"{result['tokens_per_second']:.0f} | {mfu:.1%} | {result['peak_memory_gib']:.2f} | {ratio} |"
        )
    print(f"\nMFU against: {source}")


if __name__ == "__main__":
    main()
