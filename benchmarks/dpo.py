"""SFT on the demo tickets, then DPO from that tuned model on preference pairs built from the demo: held-out
preference accuracy and exact match, SFT model and DPO model side by side, same run.

    nice -n 5 .venv/bin/python benchmarks/dpo.py                          # 120 training tickets, 80 test
    .venv/bin/python benchmarks/dpo.py --train 240 --sft-epochs 3            # the run in docs/preference.md

The pairs: each training ticket's right team preferred over a wrong one (drawn with a fixed seed from the other
teams); the held-out pairs are the test tickets', the DPO run's validation file. Reported per model: the share
of held-out pairs whose right team the model itself gives the higher log-probability (its preference accuracy),
DPO's ``eval_rewards/accuracies`` and margins (its implicit rewards against the SFT model, the reference: 0 at step
0 by construction), and exact match of greedy answers on the test tickets (tunery's evaluation, labels
constrained as the server serves them). The real default model (SmolLM2-135M-Instruct), LoRA, fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from tunery.data.tokenize import encode_pair
from tunery.data.validation import read_examples
from tunery.demo import dataset_paths
from tunery.hardware import cpu_kind
from tunery.models.catalog import DEFAULT_MODEL
from tunery.models.tuned import load_tuned
from tunery.sdk.evaluation import evaluate
from tunery.tuning import TuningSpec, tune
from tunery.tuning.losses import sequence_logps
from tunery.tuning.objectives import PairBatcher


def pair_lines(examples: list, labels: list[str], seed: int) -> list[dict]:
    """Vertex-shaped preference lines: the right team (score 1) over a wrong one (score 0)."""
    rng = random.Random(seed)
    lines = []
    for example in examples:
        wrong = rng.choice([label for label in labels if label != example.target])
        lines.append(
            {
                "systemInstruction": {"parts": [{"text": example.system}]},
                "contents": [{"role": "user", "parts": [{"text": example.turns[0].text}]}],
                "completions": [
                    {"score": 1, "completion": {"role": "model", "parts": [{"text": example.target}]}},
                    {"score": 0, "completion": {"role": "model", "parts": [{"text": wrong}]}},
                ],
            }
        )
    return lines


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@torch.no_grad()
def preference_accuracy(model_dir: Path, pairs: Path) -> float:
    """The share of ``pairs`` whose chosen answer ``model_dir``'s model gives the higher log-probability."""
    model, tokenizer = load_tuned(model_dir)
    model.eval()
    encoded = [encode_pair(tokenizer, p, 1024) for p in read_examples(pairs, objective="DPO").pairs]
    right = 0
    for start in range(0, len(encoded), 16):
        chunk = encoded[start : start + 16]
        logps, _ = sequence_logps(model.get_base_model(), PairBatcher(tokenizer.pad_token_id)(chunk))
        right += int((logps[: len(chunk)] > logps[len(chunk) :]).sum())
    return right / len(encoded)


def exact_match(model_dir: Path, test: Path, output: Path) -> float:
    run = evaluate(model_dir, test, output=output, advice=False, max_output_tokens=8)
    [evaluation] = run.comparison.evaluations
    return sum(p.output.strip() == p.target.strip() for p in evaluation.predictions) / len(evaluation.predictions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=120, help="training tickets (of 240)")
    parser.add_argument("--test", type=int, default=80, help="test tickets (of 80) for exact match and held-out pairs")
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--dpo-epochs", type=int, default=1)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-rate", type=float, help="DPO's learningRateMultiplier (default: tunery's, 0.1)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--sft", type=Path, help="an SFT model of an earlier run of this script, reused (same --train)")
    args = parser.parse_args()
    train_file, test_file = dataset_paths()
    train = read_examples(train_file).examples[: args.train]
    test = read_examples(test_file).examples[: args.test]
    labels = sorted({e.target for e in train + test})
    root = Path(tempfile.mkdtemp(prefix="tunery-dpo-bench-"))
    sft_train = write(
        root / "sft-train.jsonl", [json.loads(line) for line in train_file.read_text().splitlines()][: args.train]
    )
    pairs_train = write(root / "pairs-train.jsonl", pair_lines(train, labels, seed=0))
    pairs_test = write(root / "pairs-test.jsonl", pair_lines(test, labels, seed=1))
    test_file = write(
        root / "test.jsonl", [json.loads(line) for line in test_file.read_text().splitlines()][: args.test]
    )
    common = {"precision": "fp32", "device": "cpu", "batch_size": 8, "seed": 0}

    started = time.perf_counter()
    sft = args.sft or tune(
        TuningSpec(
            train=str(sft_train), base_model=args.model, epochs=args.sft_epochs, output=str(root / "sft"), **common
        )
    )
    sft_seconds = None if args.sft else time.perf_counter() - started  # reused: tuned in an earlier run
    started = time.perf_counter()
    dpo = tune(
        TuningSpec(
            train=str(pairs_train),
            validation=str(pairs_test),
            base_model=str(sft),
            objective="DPO",
            beta=args.beta,
            epochs=args.dpo_epochs,
            learning_rate_multiplier=args.dpo_rate,
            output=str(root / "dpo"),
            **common,
        )
    )
    dpo_seconds = time.perf_counter() - started
    metrics = [json.loads(line) for line in (dpo / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "eval_rewards/accuracies" in m]
    rows = [
        ("SFT (LoRA)", sft, sft_seconds, None),
        ("SFT -> DPO (same adapter)", dpo, dpo_seconds, evals[-1]),
    ]
    print(
        f"SmolLM2-135M-Instruct ({args.model}), {args.train} training tickets, {len(test)} test tickets; "
        f"CPU {cpu_kind()}, fp32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"DPO: beta {args.beta}, {args.dpo_epochs} epoch(s), learningRateMultiplier {args.dpo_rate or 'auto (0.1)'}; "
        f"eval_rewards/accuracies at step 0: {evals[0]['eval_rewards/accuracies']:.3f} (reference = policy)"
    )
    print(
        "| model | tuning s | held-out preference accuracy | eval_rewards/accuracies | eval_rewards/margins "
        "| exact match |"
    )
    print("|---|---|---|---|---|---|")
    for name, model_dir, seconds, last in rows:
        accuracy = preference_accuracy(model_dir, pairs_test)
        match = exact_match(model_dir, test_file, root / f"eval-{model_dir.name}")
        rewards = f"{last['eval_rewards/accuracies']:.3f}" if last else "-"
        margins = f"{last['eval_rewards/margins']:.3f}" if last else "-"
        took = "earlier run" if seconds is None else f"{seconds:.0f}"
        print(f"| {name} | {took} | {accuracy:.3f} | {rewards} | {margins} | {match:.3f} |", flush=True)
    print(f"runs kept in {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
