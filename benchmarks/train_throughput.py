"""Training throughput of tunery against TRL's SFTTrainer + PEFT, on this machine, in one process.

    python benchmarks/train_throughput.py                 # LoRA: tunery vs TRL defaults
    python benchmarks/train_throughput.py --full          # also full fine-tuning
    python benchmarks/train_throughput.py --examples 240  # more of the demo data

tunery runs twice: at its default precision ("auto": bf16-mixed on a CPU with AVX512-BF16 or AMX)
and in fp32.
TRL runs three ways: at its defaults (which on a CPU means bf16 autocast and gradient checkpointing),
in fp32 with gradient checkpointing, and in fp32 without it (its fastest set-up on this CPU). The
defaults row runs only where a bounded matmul probe (at most 1.5 s per precision) finds bf16 at least
1.2x faster than fp32; on a CPU without AVX512-BF16/AMX bf16 is emulated and that run would take hours,
so the table says "skipped" with the measured rates (``--trl-bf16 run|skip`` overrides the probe).
All runs tune the default model (smollm2-135m-instruct) for one epoch on the same examples of the
demo dataset, with the same LoRA rank (8, all linear layers) and batch size (8). "tokens/s" counts
the real (non-padding) tokens processed per second of training; "padding" is the share of padded
positions in the batches. The machine's limit is the fp32 matmul rate measured here (the best of a
probe before the runs and one after them: on a shared machine one probe may land in a busy moment),
divided by the FLOPs a token costs: about 4·N for LoRA (forward, and backward through activations only) and 6·N for
full tuning, N = the model's parameter count; a run's limit uses the matmul rate of its precision
(fp32, or bf16 for bf16-mixed runs). tunery computes logits only at trained positions, so its real
FLOPs per token are below 4·N; the share is reported on the same 4·N basis for every run.
Needs the bench extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tunery.data.validation import read_examples
from tunery.demo import dataset_paths
from tunery.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_base
from tunery.tuning import Hooks, TuningSpec, tune
from tunery.tuning.batching import micro_batches, plan_epoch

DTYPES = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16}
PROBE_SECONDS = 1.5  # per precision: the probe never runs longer, whatever the CPU
BF16_MIN_SPEEDUP = 1.2  # TRL's bf16 default runs only where bf16 matmuls beat fp32 by this much


def matmul_gflops(dtype: torch.dtype = torch.float32, seconds: float = PROBE_SECONDS, max_size: int = 2048) -> float:
    """Best matmul rate seen on square matrices of 256, 512, ... up to ``max_size``, within ``seconds`` in all.

    Bounded by time, not by size: on a CPU without AVX512-BF16 a 2048² bf16 matmul takes seconds (the
    emulated path), so sizes stop growing once one product would not fit in the time left.
    """
    deadline = time.perf_counter() + seconds
    best, size, last = 0.0, 256, 0.0
    while size <= max_size and time.perf_counter() + 16 * last < deadline:  # 8x per doubling, warm-up + 1
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        for _ in range(3):
            started = time.perf_counter()
            a @ b
            last = time.perf_counter() - started
            best = max(best, 2 * size**3 / last / 1e9)
            if time.perf_counter() >= deadline:
                break
        size *= 2
    return best


def trl_bf16_verdict(peak: dict[str, float], choice: str) -> tuple[bool, str]:
    """Whether TRL's bf16 default row runs, and why: by ``--trl-bf16`` (run, skip) or by the probe (auto)."""
    speedup = peak["bf16-mixed"] / peak["fp32"]
    measured = f"bf16 matmul {peak['bf16-mixed']:.0f} GFLOP/s = {speedup:.2f}x fp32"
    if choice != "auto":
        return choice == "run", f"{choice} (--trl-bf16 {choice}; {measured})"
    if speedup >= BF16_MIN_SPEEDUP:
        return True, f"run ({measured}, at least {BF16_MIN_SPEEDUP}x)"
    return False, f"skipped ({measured}, under {BF16_MIN_SPEEDUP}x: no fast bf16 on this CPU, it would take hours)"


def subset(path: Path, n: int, workdir: Path) -> Path:
    lines = path.read_text().splitlines()[:n]
    out = workdir / f"train-{n}.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def run_tunery(train: Path, method: str, workdir: Path, precision: str) -> dict:
    output = workdir / f"tunery-{method}-{precision}"
    spec = TuningSpec(train=str(train), method=method, epochs=1, output=str(output), precision=precision)
    last: dict = {}
    tuned = tune(spec, Hooks(on_metrics=last.update))
    manifest = json.loads((tuned / "tunery.json").read_text())
    base = resolve_base(DEFAULT_MODEL)
    report = read_examples(train, tokenizer=load_tokenizer(base.path))
    lengths = [len(e.input_ids) for e in report.encoded]
    real = padded = 0
    for step in plan_epoch(lengths, spec.batch_size, spec.seed, 0):
        for group in micro_batches(step, lengths, spec.micro_batch_tokens):
            real += sum(lengths[i] for i in group)
            padded += max(lengths[i] for i in group) * len(group)
    return {
        "tokens_per_second": last["tokens_per_second"],
        "padding": 1 - real / padded,
        "seconds": manifest["trainingSeconds"],
        "precision": manifest["hyperParameters"]["precision"],
    }


def run_trl(train: Path, method: str, workdir: Path, **options: Any) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    base = resolve_base(DEFAULT_MODEL)
    tokenizer = load_tokenizer(base.path)
    examples = read_examples(train).examples
    dataset = Dataset.from_list([{"messages": e.messages()} for e in examples])
    config = SFTConfig(
        output_dir=str(workdir / f"trl-{method}"),
        num_train_epochs=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        seed=0,
        disable_tqdm=True,
        **options,
    )
    peft_config = (
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM") if method == "lora" else None
    )
    trainer = SFTTrainer(
        model=load_model(base.path),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    counts = {"real": 0, "padded": 0}
    collate = trainer.data_collator

    def counting(features):  # type: ignore[no-untyped-def]
        batch = collate(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["attention_mask"].numel()
        return batch

    trainer.data_collator = counting
    result = trainer.train()
    seconds = result.metrics["train_runtime"]
    return {
        "tokens_per_second": counts["real"] / seconds,
        "padding": 1 - counts["real"] / counts["padded"],
        "seconds": seconds,
        "precision": "bf16-mixed" if config.bf16 else "fp32",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64, help="Training examples from the demo dataset.")
    parser.add_argument("--full", action="store_true", help="Also benchmark full fine-tuning.")
    parser.add_argument(
        "--trl-bf16",
        choices=["auto", "run", "skip"],
        default="auto",
        help="TRL's bf16 default row: auto runs it only where the probe finds bf16 matmuls fast.",
    )
    args = parser.parse_args()
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:  # the TRL rows are the baseline: fail before minutes of tunery runs, not after them
        raise SystemExit(f"not installed: {', '.join(missing)} (the TRL baseline); pip install -e '.[bench]'")
    torch.manual_seed(0)
    base = resolve_base(DEFAULT_MODEL)
    n_params = sum(p.numel() for p in load_model(base.path).parameters())
    peak = {"fp32": matmul_gflops(torch.float32), "bf16-mixed": matmul_gflops(torch.bfloat16)}
    trl_bf16, verdict = trl_bf16_verdict(peak, args.trl_bf16)
    rows = []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        train = subset(dataset_paths()[0], args.examples, workdir)
        for method in ["lora", "full"] if args.full else ["lora"]:
            defaults = f"TRL SFTTrainer {method}, defaults (bf16, gradient checkpointing)"
            runs = [
                (f"tunery {method}, precision auto", run_tunery(train, method, workdir, "auto")),
                (f"tunery {method}, fp32", run_tunery(train, method, workdir, "fp32")),
            ]
            if trl_bf16:
                runs.append((defaults, run_trl(train, method, workdir)))
            runs += [
                (f"TRL SFTTrainer {method}, fp32, gradient checkpointing", run_trl(train, method, workdir, bf16=False)),
                (
                    f"TRL SFTTrainer {method}, fp32, no gradient checkpointing",
                    run_trl(train, method, workdir, bf16=False, gradient_checkpointing=False),
                ),
            ]
            default, best = runs[2][1]["tokens_per_second"], max(r["tokens_per_second"] for _, r in runs[2:])
            results.append((method, runs, default, best))
    # The limit is the hardware's: on a shared machine one probe can land in a busy moment (an fp32 rate a
    # third of the real one was seen), so the best of a probe before and one after the runs is used.
    peak = {precision: max(rate, matmul_gflops(DTYPES[precision])) for precision, rate in peak.items()}
    for method, runs, default, best in results:
        flops_per_token = (4 if method == "lora" else 6) * n_params
        for name, r in runs:
            tps = r["tokens_per_second"]
            limit = peak[r["precision"]] * 1e9 / flops_per_token
            rows.append(
                (name, r["precision"], f"{tps:.1f}", f"{r['padding']:.1%}", tps / default, tps / best, tps / limit)
            )
        if not trl_bf16:
            defaults = f"TRL SFTTrainer {method}, defaults (bf16, gradient checkpointing)"
            rows.insert(len(rows) - 2, (defaults, "bf16-mixed", verdict, "", None, None, None))
    print(f"\nmodel {DEFAULT_MODEL}: {n_params / 1e6:.1f}M parameters; {args.examples} examples, 1 epoch, batch 8")
    print(
        f"threads: {torch.get_num_threads()}; matmul (best of 256² to 2048², {PROBE_SECONDS} s per precision, "
        "best of a probe before and one after the runs):"
    )
    for precision, gflops in peak.items():
        print(
            f"  {precision}: {gflops:.0f} GFLOP/s, limit {gflops * 1e9 / (4 * n_params):.0f} tokens/s for LoRA (4·N), "
            f"{gflops * 1e9 / (6 * n_params):.0f} for full (6·N)"
        )
    print(f"TRL's bf16 default row: {verdict}")
    baseline = "TRL defaults" if trl_bf16 else "TRL fp32 + checkpointing"
    print()
    print(f"| run | precision | tokens/s | padding | × {baseline} | × best TRL | share of limit |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, precision, tps, pad, ratio, best_ratio, share in rows:
        cells = ["" if x is None else f"{x:.2f}" for x in (ratio, best_ratio)]
        cells.append("" if share is None else f"{share:.1%}")
        print(f"| {name} | {precision} | {tps} | {pad} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
