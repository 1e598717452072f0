"""Where a model errs, and what a training file lacks.

``error_analysis``: per candidate, the classes or fields it gets wrong most, its most frequent
confusions, and examples of each. ``data_advice``: for a training file, exact and near duplicates,
conflicting answers for the same input, class imbalance, truncated examples, and how far the
evaluation (or production) prompts sit from the training prompts in sentence-embedding space.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunery.data.formats import Example
from tunery.data.tokenize import TemplateError, encode
from tunery.data.validation import read_examples
from tunery.errors import DatasetError
from tunery.evaluation import metrics
from tunery.evaluation.run import Prediction
from tunery.evaluation.tasks import ALL_MODALITIES, Task, infer_kind

TOP = 5  # rows listed per finding
SHOWN = 3  # examples shown per row
NEAR_DUPLICATE = 0.95  # cosine similarity of two prompts at or above which they are near duplicates
IMBALANCE_RATIO = 3.0  # largest class / smallest class at or above which the data is imbalanced


def error_analysis(predictions: Sequence[Prediction], task: Task) -> dict[str, Any]:
    """What the candidate gets wrong most, with examples; the shape depends on the task."""
    wrong = [p for p in predictions if p.score < 1.0]
    out: dict[str, Any] = {"errors": len(wrong), "examples": len(predictions)}
    if task.kind == "classification":
        out.update(_classification_errors(predictions))
    elif task.kind == "extraction":
        out.update(_extraction_errors(predictions))
    else:
        worst = sorted(predictions, key=lambda p: (p.score, p.line))[:TOP]
        out["lowest_scores"] = [_shown(p) | {"rougeL": p.score} for p in worst if p.score < 1.0]
    return out


def _shown(p: Prediction) -> dict[str, Any]:
    return {"line": p.line, "input": p.input, "target": p.target, "output": p.output}


def _classification_errors(predictions: Sequence[Prediction]) -> dict[str, Any]:
    by_class: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_class[p.target].append(p)
    classes: list[dict[str, Any]] = []
    for label, rows in by_class.items():
        missed = [p for p in rows if p.label != label]
        if missed:
            shown = [_shown(p) for p in missed[:SHOWN]]
            classes.append({"label": label, "errors": len(missed), "support": len(rows), "examples": shown})
    classes.sort(key=lambda c: (-c["errors"] / c["support"], -c["errors"], c["label"]))
    pairs: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for p in predictions:
        if p.label != p.target:
            pairs[(p.target, p.label or metrics.NO_LABEL)].append(p)
    confusions = [
        {"target": t, "predicted": pred, "count": len(rows), "examples": [_shown(p) for p in rows[:SHOWN]]}
        for (t, pred), rows in sorted(pairs.items(), key=lambda item: (-len(item[1]), item[0]))
    ]
    return {"worst_classes": classes[:TOP], "confusions": confusions[:TOP]}


def _extraction_errors(predictions: Sequence[Prediction]) -> dict[str, Any]:
    invalid = [p for p in predictions if metrics.parse_json_object(p.output) is None]
    fields: dict[str, dict[str, Any]] = {}
    for p in predictions:
        gold = metrics.flatten_fields(metrics.parse_json_object(p.target) or {})
        parsed = metrics.parse_json_object(p.output)
        pred = metrics.flatten_fields(parsed) if parsed is not None else {}
        for path, counts in metrics.field_counts(metrics.parse_json_object(p.target) or {}, parsed).items():
            if counts["tp"]:
                continue
            entry = fields.setdefault(path, {"field": path, "errors": 0, "missing": 0, "wrong": 0, "spurious": 0,
                                             "examples": []})  # fmt: skip
            kind = "wrong" if counts["wrong"] else "missing" if counts["fn"] else "spurious"
            entry["errors"] += 1
            entry[kind] += 1
            if len(entry["examples"]) < SHOWN:
                entry["examples"].append(
                    {"line": p.line, "input": p.input, "expected": gold.get(path), "got": pred.get(path), "kind": kind}
                )
    worst = sorted(fields.values(), key=lambda f: (-f["errors"], f["field"]))
    return {
        "invalid_json": len(invalid),
        "invalid_json_examples": [_shown(p) for p in invalid[:SHOWN]],
        "worst_fields": worst[:TOP],
    }


def prompt_text(example: Example) -> str:
    """The text a request carries from the user (every user turn before the answer)."""
    return "\n".join(t.text for t in example.prompt().turns if t.role == "user")


def _key(text: str) -> str:
    """Case, punctuation and spacing do not make two inputs different."""
    return " ".join(re.findall(r"\w+", text.lower()))


def data_advice(
    train: str | Path,
    prompts: Sequence[Example] = (),
    tokenizer: Any = None,
    max_length: int = 1024,
    near_threshold: float = NEAR_DUPLICATE,
) -> dict[str, Any]:
    """Findings about a training file and, given ``prompts``, how well it covers them (see the module doc)."""
    report = read_examples(train, modalities=ALL_MODALITIES)
    if report.errors:
        raise DatasetError(f"{train}: {len(report.errors)} problem(s) in the training file", report.errors)
    examples = report.examples
    advice: dict[str, Any] = {"train": str(train), "examples": len(examples)}
    advice["exact_duplicates"] = _exact_duplicates(examples)
    advice["conflicting_labels"] = _conflicts(examples)
    advice["class_balance"] = _class_balance(examples)
    advice["truncated"] = _truncated(examples, tokenizer, max_length) if tokenizer is not None else None
    from tunery.evaluation.embeddings import embed

    train_vectors = embed([prompt_text(e) for e in examples])
    advice["near_duplicates"] = _near_duplicates(examples, train_vectors, near_threshold)
    advice["coverage"] = _coverage(examples, train_vectors, prompts, embed) if prompts else None
    advice["advice"] = _sentences(advice)
    return advice


def _truncated(examples: Sequence[Example], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Lines of the examples longer than ``max_length`` tokens in the model's chat template."""
    lines = []
    for e in examples:
        try:
            if encode(tokenizer, e, max_length).truncated:
                lines.append(e.line)
        except TemplateError:
            continue  # the template cannot train this conversation; validation reports that
    return {"max_length": max_length, "lines": lines}


def _exact_duplicates(examples: Sequence[Example]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for e in examples:
        groups[(e.system, tuple((t.role, t.text) for t in e.turns))].append(e.line)
    return [{"lines": lines, "input": prompt_text(examples[0])} for lines in groups.values() if len(lines) > 1]


def _conflicts(examples: Sequence[Example]) -> list[dict[str, Any]]:
    answers: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    inputs: dict[str, str] = {}
    for e in examples:
        key = _key(f"{e.system or ''}\n{prompt_text(e)}")
        answers[key][e.target.strip()].append(e.line)
        inputs.setdefault(key, prompt_text(e))
    return [
        {"input": inputs[key], "answers": dict(by_answer)} for key, by_answer in answers.items() if len(by_answer) > 1
    ]


def _class_balance(examples: Sequence[Example]) -> dict[str, Any] | None:
    targets = [e.target.strip() for e in examples]
    if infer_kind(targets) != "classification":
        return None
    counts = Counter(targets)
    ratio = max(counts.values()) / min(counts.values())
    return {
        "counts": dict(counts.most_common()),
        "ratio": round(ratio, 2),
        "imbalanced": ratio >= IMBALANCE_RATIO,
    }


def _near_duplicates(examples: Sequence[Example], vectors: Any, threshold: float) -> dict[str, Any]:
    """Pairs of training prompts at cosine similarity ``threshold`` or more, other than identical ones."""
    import torch

    if len(examples) < 2:
        return {"threshold": threshold, "pairs": 0, "top": []}
    sims = torch.triu(vectors @ vectors.T, diagonal=1)
    rows, cols = torch.nonzero(sims >= threshold, as_tuple=True)
    pairs: list[dict[str, Any]] = []
    for i, j in zip(rows.tolist(), cols.tolist()):
        a, b = examples[i], examples[j]
        if _key(prompt_text(a)) != _key(prompt_text(b)):
            pairs.append({"lines": [a.line, b.line], "similarity": round(float(sims[i, j]), 4),
                          "inputs": [prompt_text(a), prompt_text(b)]})  # fmt: skip
    pairs.sort(key=lambda p: -p["similarity"])
    return {"threshold": threshold, "pairs": len(pairs), "top": pairs[:TOP]}


def _coverage(
    examples: Sequence[Example], train_vectors: Any, prompts: Sequence[Example], embed: Any
) -> dict[str, Any]:
    """Cosine distance (1 - similarity) from each prompt to its nearest training prompt."""
    vectors = embed([prompt_text(p) for p in prompts])
    best, nearest = (vectors @ train_vectors.T).max(dim=1)
    distances = (1 - best).clamp(min=0).tolist()
    baseline = None
    if len(examples) > 1:
        within = train_vectors @ train_vectors.T
        within.fill_diagonal_(-1.0)
        baseline = statistics.median((1 - within.max(dim=1).values).clamp(min=0).tolist())
    order = sorted(range(len(prompts)), key=lambda i: -distances[i])[:TOP]
    return {
        "prompts": len(prompts),
        "distance_mean": round(statistics.fmean(distances), 4),
        "distance_median": round(statistics.median(distances), 4),
        "distance_p95": round(metrics.percentile(distances, 95), 4),
        "distance_max": round(max(distances), 4),
        "train_median": round(baseline, 4) if baseline is not None else None,
        "least_covered": [
            {
                "line": prompts[i].line,
                "input": prompt_text(prompts[i]),
                "distance": round(distances[i], 4),
                "nearest_train_line": examples[int(nearest[i])].line,
                "nearest_train_input": prompt_text(examples[int(nearest[i])]),
            }
            for i in order
        ],
        "model": "all-MiniLM-L6-v2",
    }


def _sentences(advice: dict[str, Any]) -> list[str]:
    """The findings as short advice a user can act on."""
    out = []
    if advice["exact_duplicates"]:
        n = sum(len(g["lines"]) - 1 for g in advice["exact_duplicates"])
        out.append(f"{n} exact duplicate example(s): remove them; they weigh those inputs more in training.")
    if advice["near_duplicates"]["pairs"]:
        out.append(
            f"{advice['near_duplicates']['pairs']} pair(s) of near-duplicate prompts "
            f"(similarity ≥ {advice['near_duplicates']['threshold']}): check they add variety."
        )
    if advice["conflicting_labels"]:
        out.append(f"{len(advice['conflicting_labels'])} input(s) have conflicting answers: fix the labels.")
    balance = advice["class_balance"]
    if balance and balance["imbalanced"]:
        rare = min(balance["counts"], key=balance["counts"].get)
        out.append(
            f"classes are imbalanced ({balance['ratio']}× between the largest and smallest); "
            f"add examples of rare ones such as {rare!r}."
        )
    if advice["truncated"] and advice["truncated"]["lines"]:
        out.append(
            f"{len(advice['truncated']['lines'])} example(s) are longer than {advice['truncated']['max_length']} "
            "tokens and are truncated: shorten them or raise --max-length."
        )
    coverage = advice["coverage"]
    if coverage and coverage["train_median"] is not None and coverage["distance_median"] > 2 * coverage["train_median"]:
        out.append(
            "the evaluation prompts sit far from the training prompts "
            f"(median distance {coverage['distance_median']:.3f} vs {coverage['train_median']:.3f} within training): "
            "add training examples like the least-covered ones."
        )
    return out or ["no problems found."]
