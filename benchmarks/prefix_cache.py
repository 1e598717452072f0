"""The demo's base-model few-shot evaluation with and without shared prefixes computed once, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/prefix_cache.py            # the 80 held-out tickets
    PYTHONPATH=. .venv/bin/python benchmarks/prefix_cache.py --limit 20 --weights fp32

Both rows run ``tunery.evaluation``'s loop (``predict_all``: one request at a time, as ``tunery demo`` and
``tunery evaluate`` do) on the same in-process engine kind, the demo's default model and its few-shot prompt
(the system instruction and one training ticket per label as earlier turns: about 800 of each prompt's ~866
tokens are the same for every ticket). The baseline keeps no prefixes (``Prefixes.max_bytes`` 0); the other row
keeps them as the engine does by default. The table gives seconds, seconds per request, the ratio, the prompt
tokens not prefilled again, and how many answers are identical to the baseline's (greedy).
"""

from __future__ import annotations

import argparse
import time

import torch

from tunery.data import read_examples
from tunery.demo import dataset_paths, few_shot_prompt, label_set
from tunery.evaluation.run import output_budget, predict_all
from tunery.evaluation.tasks import Task
from tunery.hardware import cpu_kind
from tunery.models.catalog import DEFAULT_MODEL
from tunery.serving.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--limit", type=int, default=None, help="the first N test tickets only")
    parser.add_argument("--weights", default="fp32", help="the engine's weights (evaluation runs fp32)")
    args = parser.parse_args()

    train_path, test_path = dataset_paths()
    labels = label_set()
    task = Task("classification", tuple(sorted(label["name"] for label in labels)))
    engine = Engine(args.model, weights=args.weights)
    train = read_examples(train_path, tokenizer=engine.tokenizer, model_id=args.model)
    test = read_examples(test_path, tokenizer=engine.tokenizer, model_id=args.model).examples[: args.limit]
    prompt = few_shot_prompt(labels, train)
    config = output_budget(engine, test)
    prefixes = engine.served.base.prefixes
    budget = prefixes.max_bytes

    rows = []
    for name, keep in (("every prompt prefilled whole (baseline)", 0), ("shared prefixes computed once", budget)):
        prefixes.max_bytes, prefixes.hits, prefixes.reused = keep, 0, 0
        prefixes.drop(0)
        started = time.perf_counter()
        predictions = predict_all(engine, test, prompt, task, config)
        seconds = time.perf_counter() - started
        tokens = sum(p.prompt_tokens for p in predictions)
        rows.append((name, seconds, predictions, tokens, prefixes.reused))
        print(f"{name}: {seconds:.1f} s", flush=True)

    base_seconds, base_predictions = rows[0][1], rows[0][2]
    print(
        f"\n{args.model}, {args.weights}, the demo's few-shot prompt, {len(test)} tickets; "
        f"CPU {cpu_kind()}, torch threads {torch.get_num_threads()}\n"
    )
    print("| row | seconds | s / request | × baseline | prompt tokens | not prefilled again | answers = baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, seconds, predictions, tokens, reused in rows:
        same = sum(a.output == b.output for a, b in zip(predictions, base_predictions, strict=True))
        print(
            f"| {name} | {seconds:.1f} | {seconds / len(test):.2f} | {base_seconds / seconds:.2f} | {tokens} "
            f"| {reused} | {same}/{len(test)} |"
        )
    correct = [sum(p.score for p in r[2]) / len(test) for r in rows]
    print(f"\naccuracy: baseline {correct[0]:.3f}, with prefixes {correct[1]:.3f}")


if __name__ == "__main__":
    main()
