"""Task quality of tunery's defaults (issue #29), on data nobody here wrote, beside the baselines, in one table.

    nice -n 5 python benchmarks/quality.py --work /tmp/quality

Tasks (``benchmarks/data``, see its README): ``intents`` — CLINC150, 75 intents × 10 training examples, 300 held-out
messages; ``slots`` — SNIPS slot filling as JSON answers, 301 training messages, 140 held out. Rows, each through
tunery's own paths (``sft.train``, ``tunery.evaluate``):

- ``base``: the base model (the catalog default) with a prompt naming the labels (intents) or the JSON form (slots);
- ``old``: tunery with the defaults before #29 (rank 8, multiplier 1, ``max(2, ceil(1000 / examples))`` epochs,
  every example trained on, the last epoch kept);
- ``new``: tunery with today's defaults (nothing set: ``tunery.tuning.defaults``, the held-out slice, the best
  checkpoint);
- ``constrained``: the ``new`` model held to its kept label set (intents, ``constrain="labels"``) or answer schema
  (slots, the default); the ``old`` and ``new`` rows are free answers (``constrain="none"``);
- ``tfidf``: TF-IDF + logistic regression (scikit-learn) on the same split: the floor without a language model.

Columns: accuracy, macro-F1 and answers that are no label (intents); field micro-F1, exact match and valid JSON
(slots); wall seconds to tune (the job, data checks to tuned model). Tuned models are kept under ``--work`` and reused
when present, so a run can be split (``--rows``, ``--tasks``). ``--limit N`` evaluates the first N test examples only
(say so when you quote it). On 2 shared AVX2 cores one tuning of the intents task takes tens of minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from tunery.hardware import cpu_kind

HERE = Path(__file__).parent / "data"
TASKS = {
    "intents": (HERE / "clinc75_train.jsonl", HERE / "clinc75_test.jsonl"),
    "slots": (HERE / "snips_slots_train.jsonl", HERE / "snips_slots_test.jsonl"),
}
ROWS = ("base", "old", "new", "constrained", "tfidf")


def examples(path: Path) -> list[tuple[str, str]]:
    """(user text, answer) of each line."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        contents = json.loads(line)["contents"]
        rows.append((contents[0]["parts"][0]["text"], contents[-1]["parts"][0]["text"]))
    return rows


def old_epochs(count: int) -> int:
    """The epoch rule before #29: about 1,000 example passes, 2 to 10 epochs."""
    return max(2, min(10, math.ceil(1000 / count)))


def tune(work: Path, task: str, row: str, train: Path) -> tuple[Path, float | None]:
    """The tuned model of ``row`` (tuned now through ``sft.train``, or reused from ``work``) and its wall seconds."""
    from tunery import sft

    output = work / f"{task}-{row}"
    if (output / "tunery.json").is_file():  # tuned before: the job's wall seconds, else its training seconds
        manifest = json.loads((output / "tunery.json").read_text())
        return output, manifest.get("benchmarkSeconds") or manifest.get("trainingSeconds")
    old = {"epochs": old_epochs(len(examples(train))), "adapter_size": 8, "learning_rate_multiplier": 1.0}
    settings = old | {"auto_validation": False} if row == "old" else {}
    started = time.perf_counter()
    job = sft.train(train_dataset=train, output_dir=output, **settings).wait()
    seconds = time.perf_counter() - started
    if not job.has_succeeded:
        raise SystemExit(f"{task}-{row}: the tuning job ended {job.state}: {job.error}")
    manifest = json.loads((output / "tunery.json").read_text())
    manifest["benchmarkSeconds"] = round(seconds, 1)
    (output / "tunery.json").write_text(json.dumps(manifest, indent=2))
    return output, seconds


def base_prompt(work: Path, task: str, train: Path) -> Path:
    """A prompt for the base model: the labels it must choose from (intents), or the JSON form with the slot names
    (slots), and two examples of the training file."""
    answers = sorted({a for _, a in examples(train)})
    if task == "intents":
        system = "Name the intent of the user's message. Answer with one of these labels only: " + ", ".join(answers)
    else:
        keys = sorted({k for a in answers for k in json.loads(a)})
        system = (
            "Extract the slots of the user's request as a JSON object of slot name to the exact text. "
            f"Slot names: {', '.join(keys)}. Answer with the JSON object only."
        )
    path = work / f"{task}-base-prompt.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"name": "labels", "system": system, "shots": 2, "shots_file": str(train)}))
    return path


def evaluate(model: str | Path, test: Path, train: Path, limit: int | None, **options: Any) -> dict[str, Any]:
    from tunery import evaluate as run

    done = run(str(model), str(test), train=str(train), limit=limit, advice=False, **options)
    return done.comparison.evaluations[0].summary


def tfidf(train: Path, test: Path, limit: int | None) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from tunery.evaluation.metrics import classification_metrics

    seen, held = examples(train), examples(test)[:limit]
    started = time.perf_counter()
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=20, max_iter=2000)
    )
    model.fit([t for t, _ in seen], [a for _, a in seen])
    seconds = time.perf_counter() - started
    predicted = list(model.predict([t for t, _ in held]))
    labels = sorted({a for _, a in seen})
    summary = classification_metrics([a for _, a in held], predicted, labels)
    return {**summary, "tuneSeconds": seconds}


def measure(task: str, row: str, work: Path, limit: int | None, base_limit: int | None) -> dict[str, Any]:
    train, test = TASKS[task]
    if row == "tfidf":
        return tfidf(train, test, limit) if task == "intents" else {"skipped": "no classifier for JSON answers"}
    if row == "base":
        from tunery.models.catalog import DEFAULT_MODEL

        summary = evaluate(DEFAULT_MODEL, test, train, base_limit or limit, prompt=str(base_prompt(work, task, train)))
        return {**summary, "limit": base_limit or limit}
    if row == "constrained":  # the label set (intents) or the answer schema (slots) the tuned model keeps
        model, _ = tune(work, task, "new", train)
        return evaluate(model, test, train, limit, constrain="labels" if task == "intents" else None)
    model, seconds = tune(work, task, row, train)
    manifest = json.loads((model / "tunery.json").read_text())
    summary = evaluate(model, test, train, limit, constrain="none")  # free answers, as before #29
    return {
        **summary,
        "tuneSeconds": seconds,
        "epochs": manifest["hyperParameters"]["epochCount"],
        "best": (manifest.get("bestCheckpoint") or {}).get("why"),
    }


def cells(task: str, found: dict[str, Any]) -> list[str]:
    if "skipped" in found:
        return ["—"] * 3
    if task == "intents":
        return [f"{found['accuracy']:.1%}", f"{found['macro_f1']:.3f}", str(found.get("unrecognized", 0))]
    return [f"{found['field_f1']:.3f}", f"{found['exact_match']:.1%}", f"{found['json_valid']:.1%}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunery-quality"), help="tuned models, reused")
    parser.add_argument("--tasks", default="intents,slots")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N test examples only")
    parser.add_argument("--base-limit", type=int, default=None, help="the base row's own --limit (it is slow)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_kind()}", flush=True)
    for task in args.tasks.split(","):
        heads = ["accuracy", "macro-F1", "no label"] if task == "intents" else ["field F1", "exact", "valid JSON"]
        table = [["row", *heads, "tune s", "notes"]]
        for row in args.rows.split(","):
            found = measure(task, row, args.work, args.limit, args.base_limit)
            (args.work / f"{task}-{row}.json").write_text(json.dumps(found, indent=2, default=str))
            seconds = found.get("tuneSeconds")
            notes = "; ".join(
                str(x)
                for x in (
                    found.get("skipped"),
                    f"{found['epochs']} epochs" if "epochs" in found else None,
                    found.get("best"),
                    f"first {found['limit']} test examples" if found.get("limit") else None,
                )
                if x
            )
            table.append([row, *cells(task, found), f"{seconds:.0f}" if seconds else "—", notes])
            print(f"{task} {row}: {table[-1]}", flush=True)
        _, test = TASKS[task]
        print(f"\n{task} ({len(examples(test))} test examples{f', first {args.limit}' if args.limit else ''}):")
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for line in table:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")


if __name__ == "__main__":
    main()
