"""What a run makes of its data before and after it trains (issue #29): the settings chosen from the data's shape,
the validation slice held out of the training data, a checkpoint per epoch, and the best of them as the tuned model.

    .venv/bin/python -m pytest tests/unit/test_run_plan.py -q
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tunery.models.tuned import checkpoint_dir, kept_checkpoints, read_manifest, split_checkpoint
from tunery.tuning import TuningSpec, tune
from tunery.tuning import defaults as rules
from tunery.tuning.checkpoint import best_checkpoint, kept_epochs
from tunery.tuning.prepare import HELD_OUT_FILE, prepare
from tunery.tuning.split import LEAST_EXAMPLES, held_out

ADAPTER = "adapter_model.safetensors"


def labelled(n_labels: int, per_label: int) -> list[str]:
    return [f"label_{i}" for i in range(n_labels) for _ in range(per_label)]


# a. the settings from the data's shape ------------------------------------------------------------------------


def test_epochs_follow_the_shape_and_set_values_are_kept():
    many_labels = rules.DataShape(examples=675, answers=75, closed=True, answer_tokens=4)
    few_labels = rules.DataShape(examples=216, answers=10, closed=True, answer_tokens=4)  # the demo, less its slice
    free_text = rules.DataShape(examples=675, answers=675, closed=False, answer_tokens=40)
    assert rules.auto_epochs(many_labels) == 6  # 9 examples per label: 50 passes over each label's
    assert rules.auto_epochs(few_labels) == 5  # as before: about 1,000 example passes
    assert rules.auto_epochs(free_text) == 2  # as before
    big = rules.DataShape(examples=4000, answers=2000, closed=True, answer_tokens=3)
    assert rules.auto_epochs(big) == 2  # the pass budget bounds the time
    chosen = rules.resolve(many_labels, None, None, None)
    assert chosen.describe()[0] == "epochs 6 (auto: 675 examples, 75 answers, 9 per answer, of ~4 tokens)"
    given = rules.resolve(many_labels, 3, 16, 2.0)
    assert (given.epochs, given.adapter_size, given.learning_rate_multiplier) == (3, 16, 2.0)
    assert set(given.reasons.values()) == {"set"}
    assert chosen.learning_rate_multiplier == 1.0
    preference = rules.resolve(free_text, None, None, None, objective="DPO")  # benchmarks/dpo.py: a tenth
    assert preference.describe()[2] == "learning rate multiplier 0.1 (auto: a tenth of SFT's, for DPO)"
    assert rules.resolve(free_text, None, None, 0.5, objective="DPO").learning_rate_multiplier == 0.5


# b. the validation slice: stratified, never trained on, refused when the data are too few -----------------------


def test_split_is_stratified_by_label_and_seeded():
    answers = labelled(6, 20) + labelled(2, 5)[:0] + ["rare"] * 3
    split = held_out(answers, closed=True, seed=3)
    taken = Counter(answers[i] for i in split.held_out)
    assert len(split.held_out) == round(len(answers) * 0.1)
    assert all(taken[f"label_{i}"] == 2 for i in range(6))  # 10% of each label's 20
    assert taken["rare"] <= 1  # never a label's last example
    assert held_out(answers, closed=True, seed=3) == split
    assert held_out(answers, closed=True, seed=4).held_out != split.held_out
    assert "stratified by label" in split.note and "never trained on" in split.note


def test_too_few_examples_are_not_split_and_the_run_says_so():
    split = held_out(labelled(3, 4), closed=True, seed=0)
    assert split.held_out == () and f"needs {LEAST_EXAMPLES}" in split.note and split.note.startswith("no validation")


def test_held_out_examples_are_not_trained_on(tiny_model, tmp_path, make_train):
    train = make_train(60)
    spec = TuningSpec(train=str(train), base_model=str(tiny_model), output=str(tmp_path / "run"), auto_validation=True)
    (tmp_path / "run").mkdir()
    prep = prepare(spec, tmp_path / "run")
    held_lines = (tmp_path / "run" / HELD_OUT_FILE).read_text().splitlines()
    assert len(prep.validation) == len(held_lines) == 6 and len(prep.train) == 54
    trained = {tuple(e.input_ids) for e in prep.train}
    assert not any(tuple(e.input_ids) in trained for e in prep.validation)
    labels = Counter(json.loads(line)["contents"][-1]["parts"][0]["text"] for line in held_lines)
    assert set(labels.values()) == {2}  # three labels of 20 each: two of each held out
    assert "6 of 60" in prep.validation_note


# c. a checkpoint per epoch, and the best one ---------------------------------------------------------------------


def test_kept_epochs_are_spread_evenly_up_to_ten():
    assert kept_epochs(4) == {1, 2, 3, 4}
    assert kept_epochs(25) == {3, 5, 8, 10, 13, 15, 18, 20, 23, 25}


def test_best_checkpoint_by_exact_match_then_loss_or_by_loss_for_free_text():
    def kept(epoch: int, exact: float, loss: float) -> dict:
        return {"epoch": epoch, "step": epoch * 10, "metrics": {"eval_exact_match": exact, "eval_loss": loss}}

    runs = [kept(1, 0.5, 1.0), kept(2, 0.8, 0.9), kept(3, 0.8, 0.7), kept(4, 0.6, 0.5)]
    best, why = best_checkpoint(runs, by_answers=True)
    assert best["epoch"] == 3 and why.startswith("highest validation exact match (80.0%) at epoch 3 of 4")
    best, why = best_checkpoint(runs, by_answers=False)
    assert best["epoch"] == 4 and why.startswith("lowest validation loss")
    unscored = [{"epoch": 1, "step": 5, "metrics": {}}, {"epoch": 2, "step": 10, "metrics": {}}]
    assert best_checkpoint(unscored, by_answers=True)[0]["epoch"] == 2


def test_a_run_whose_last_epoch_is_worse_keeps_the_earlier_checkpoint(tiny_model, tmp_path, make_train):
    """Validation answers that contradict the training labels get worse as the labels are learned (seeded: the
    first epoch matches 2 of 10 by chance, the later none): the tuned model is then an earlier epoch's checkpoint,
    with its weights, not the last one."""
    rows = [json.loads(line) for line in make_train(20).read_text().splitlines()]
    rotate = {"card_arrival": "transfer_failed", "card_declined": "card_arrival", "transfer_failed": "card_declined"}
    contradicting = json.loads(json.dumps(rows[:10]))
    for row in contradicting:
        row["contents"][-1]["parts"][0]["text"] = rotate[row["contents"][-1]["parts"][0]["text"]]
    spec = TuningSpec(
        train=str(write_jsonl(tmp_path / "train.jsonl", rows)),
        validation=str(write_jsonl(tmp_path / "valid.jsonl", contradicting)),
        base_model=str(tiny_model),
        epochs=8,
        batch_size=4,
        learning_rate_multiplier=40,
        output=str(tmp_path / "tuned"),
    )
    tuned = tune(spec)
    manifest = read_manifest(tuned)
    kept = kept_checkpoints(tuned)
    assert [c["epoch"] for c in kept] == list(range(1, 9)) and manifest["checkpoints"] == kept
    scores = [(c["metrics"]["eval_exact_match"], -c["metrics"]["eval_loss"]) for c in kept]
    assert scores[-1] < max(scores)  # the construction: the last epoch is worse
    best = manifest["bestCheckpoint"]
    assert best["epoch"] == scores.index(max(scores)) + 1 and best["epoch"] != 8
    assert "at epoch" in best["why"]
    chosen, last = checkpoint_dir(tuned, best["name"]), checkpoint_dir(tuned, kept[-1]["name"])
    assert load_file(str(tuned / ADAPTER)).keys() == load_file(str(chosen / ADAPTER)).keys()
    for name, tensor in load_file(str(tuned / ADAPTER)).items():
        assert tensor.equal(load_file(str(chosen / ADAPTER))[name])
    assert any(not t.equal(load_file(str(last / ADAPTER))[n]) for n, t in load_file(str(tuned / ADAPTER)).items())
    own = read_manifest(chosen)  # each checkpoint is a tuned model of its own
    assert own["checkpoint"]["name"] == best["name"] and own["id"] == f"{manifest['id']}:{best['name']}"
    assert split_checkpoint(own["id"]) == (manifest["id"], best["name"])


def test_an_unknown_checkpoint_is_named_with_those_kept(tuned_lora):
    from tunery.errors import ModelError

    with pytest.raises(ModelError, match="no checkpoint 'ckpt-step-999'"):
        checkpoint_dir(Path(tuned_lora), "ckpt-step-999")


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
