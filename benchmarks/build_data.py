"""Build the quality benchmark's fixtures in ``benchmarks/data`` from their public sources (see its README).

    python benchmarks/build_data.py --clinc data_full.json --snips nlu-benchmark/2017-06-custom-intent-engines

``--clinc``: CLINC150's ``data/data_full.json`` (github.com/clinc/oos-eval, CC BY 3.0). ``--snips``: the
``2017-06-custom-intent-engines`` folder of github.com/snipsco/nlu-benchmark (CC0 1.0). Every draw is seeded, so
the same sources give the same files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent / "data"
SEED = 29
INTENTS, TRAIN_PER_INTENT, TEST_PER_INTENT = 75, 10, 4
SNIPS_TRAIN_PER_INTENT, SNIPS_TEST_PER_INTENT = 43, 20
INTENT_SYSTEM = "Name the intent of the user's message."
SLOTS_SYSTEM = "Extract the slots of the user's request as a JSON object of slot name to the exact text."


def example(system: str, message: str, answer: str) -> dict:
    return {
        "systemInstruction": {"parts": [{"text": system}]},
        "contents": [
            {"role": "user", "parts": [{"text": message}]},
            {"role": "model", "parts": [{"text": answer}]},
        ],
    }


def write(name: str, rows: list[dict]) -> None:
    with (HERE / name).open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} examples")


def clinc(path: Path) -> None:
    data = json.loads(path.read_text())
    by_intent: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for part in ("train", "test"):
        for text, intent in data[part]:
            by_intent[intent][part].append(text)
    rng = random.Random(SEED)
    intents = sorted(rng.sample(sorted(by_intent), INTENTS))
    train, test = [], []
    for intent in intents:
        train += [(t, intent) for t in rng.sample(by_intent[intent]["train"], TRAIN_PER_INTENT)]
        test += [(t, intent) for t in rng.sample(by_intent[intent]["test"], TEST_PER_INTENT)]
    rng.shuffle(train)
    rng.shuffle(test)
    write("clinc75_train.jsonl", [example(INTENT_SYSTEM, t, i) for t, i in train])
    write("clinc75_test.jsonl", [example(INTENT_SYSTEM, t, i) for t, i in test])


def snips_row(query: dict) -> tuple[str, str] | None:
    """The message and its slots as a JSON object; None where a slot name repeats (one value per field)."""
    slots: dict[str, str] = {}
    for chunk in query["data"]:
        if "entity" in chunk:
            if chunk["entity"] in slots:
                return None
            slots[chunk["entity"]] = chunk["text"].strip()
    text = " ".join("".join(chunk["text"] for chunk in query["data"]).split())
    return text, json.dumps(slots, ensure_ascii=False)


def text_of(path: Path) -> str:
    """The file's text: UTF-8, or Latin-1 for the source files that are not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def snips(folder: Path) -> None:
    rng = random.Random(SEED)
    train, test = [], []
    for intent in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        for file, count, into in (
            (f"train_{intent}_full.json", SNIPS_TRAIN_PER_INTENT, train),
            (f"validate_{intent}.json", SNIPS_TEST_PER_INTENT, test),
        ):
            queries = json.loads(text_of(folder / intent / file))[intent]
            rows = sorted({row for q in queries if (row := snips_row(q))})
            into += rng.sample(rows, count)
    rng.shuffle(train)
    rng.shuffle(test)
    write("snips_slots_train.jsonl", [example(SLOTS_SYSTEM, t, a) for t, a in train])
    write("snips_slots_test.jsonl", [example(SLOTS_SYSTEM, t, a) for t, a in test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinc", type=Path, required=True, help="CLINC150 data_full.json")
    parser.add_argument("--snips", type=Path, required=True, help="nlu-benchmark/2017-06-custom-intent-engines")
    args = parser.parse_args()
    HERE.mkdir(exist_ok=True)
    clinc(args.clinc)
    snips(args.snips)


if __name__ == "__main__":
    main()
