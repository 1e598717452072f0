"""Preference tuning (DPO) on a tiny model: the loss against a hand computation, the three data shapes and their
problems by line and field, a synthetic preference task learned, LoRA's frozen base, resume, two processes, and
the loss of the first steps pinned (a refactor that changes the numbers fails here).

    .venv/bin/python -m pytest tests/unit/test_dpo.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tunery.cli import app
from tunery.data.formats import parse_preference
from tunery.data.validation import read_examples
from tunery.errors import DatasetError, TuningCancelled
from tunery.tuning import Hooks, TuningSpec, tune
from tunery.tuning.losses import dpo_loss, preference_loss, sequence_logps
from tunery.tuning.methods import METHODS, method_named, method_of
from tunery.tuning.objectives import PairBatcher

ADAPTER = "adapter_model.safetensors"
PREFERRED = ["red", "green", "blue", "yes"]  # one token each (in the tiny tokenizer): no side is simply the shorter
OTHER = ["one", "four", "eight", "no"]
TOPICS = [
    "card",
    "arrival",
    "declined",
    "transfer",
    "failed",
    "payment",
    "money",
    "bank",
    "account",
    "hello",
    "world",
    "red",
    "green",
    "blue",
]


def preference_rows(n: int, offset: int = 0) -> list[dict]:
    """A colour preferred over a number, whatever the prompt; TRL's conversational shape."""
    rows = []
    for i in range(offset, offset + n):
        prompt = " ".join(TOPICS[(i * 7 + j) % len(TOPICS)] for j in range(4)) + f" #{i}"
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": PREFERRED[i % 4]}],
                "rejected": [{"role": "assistant", "content": OTHER[(i * 3 + 1) % 4]}],
            }
        )
    return rows


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pairs")
    return {
        "train": str(write(root / "train.jsonl", preference_rows(32))),
        "validation": str(write(root / "validation.jsonl", preference_rows(16, offset=100))),
    }


def dpo_spec(pairs: dict, base: Path, output: Path, **kwargs) -> TuningSpec:
    options = {"epochs": 4, "batch_size": 8, "learning_rate_multiplier": 20, "precision": "fp32", "device": "cpu"}
    options["beta"] = 0.5  # a larger beta: larger gradients, so a few steps move the tiny model far
    return TuningSpec(
        train=pairs["train"],
        validation=pairs["validation"],
        base_model=str(base),
        output=str(output),
        objective="DPO",
        **{**options, **kwargs},
    )


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dpo_run(pairs, tiny_model, tmp_path_factory) -> Path:
    return tune(dpo_spec(pairs, tiny_model, tmp_path_factory.mktemp("dpo") / "model"))


# The loss --------------------------------------------------------------------------------------------------


LOGPS = {  # policy chosen, policy rejected, reference chosen, reference rejected: three pairs
    "chosen": [-3.0, -10.0, -7.5],
    "rejected": [-5.0, -4.0, -7.0],
    "reference_chosen": [-4.0, -9.0, -7.0],
    "reference_rejected": [-4.5, -6.0, -7.5],
}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_a_hand_computation(beta):
    found = dpo_loss(*(torch.tensor(LOGPS[k]) for k in LOGPS), beta=beta)
    for i in range(3):
        chosen = LOGPS["chosen"][i] - LOGPS["reference_chosen"][i]
        rejected = LOGPS["rejected"][i] - LOGPS["reference_rejected"][i]
        loss = -math.log(1 / (1 + math.exp(-beta * (chosen - rejected))))
        assert float(found[0][i]) == pytest.approx(loss, rel=1e-6)
        assert float(found[1][i]) == pytest.approx(beta * chosen, rel=1e-6)
        assert float(found[2][i]) == pytest.approx(beta * rejected, rel=1e-6)
    ipo = dpo_loss(*(torch.tensor(LOGPS[k]) for k in LOGPS), beta=beta, kind="ipo")[0]
    margins = [
        (LOGPS["chosen"][i] - LOGPS["reference_chosen"][i]) - (LOGPS["rejected"][i] - LOGPS["reference_rejected"][i])
        for i in range(3)
    ]
    assert ipo.tolist() == pytest.approx([(m - 1 / (2 * beta)) ** 2 for m in margins], rel=1e-6)


@pytest.mark.parametrize(("kind", "beta"), [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1)])
def test_preference_loss_equals_trls_dpo_trainer(kind, beta):
    """TRL's ``DPOTrainer`` and tunery's loss on the same model, reference and batch (TRL's own tokenization and
    collation): the same loss and the same ``rewards/*`` metrics. The policy is the reference perturbed, so the
    log-ratios are not zero."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    import copy

    from tests.conftest import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    reference = build_model(tokenizer).eval()
    policy = copy.deepcopy(reference).train()  # as in a training step (the tiny model has no dropout)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    rows = [{"prompt": f"{topic} card payment", "chosen": f" {good}", "rejected": f" {bad} {bad}"}
            for topic, good, bad in zip(TOPICS, PREFERRED * 2, OTHER * 2)][:6]  # fmt: skip
    args = trl.DPOConfig(
        output_dir="unused", beta=beta, loss_type=[kind], per_device_train_batch_size=6, report_to=[], use_cpu=True,
        bf16=False, gradient_checkpointing=False,
    )  # fmt: skip
    trainer = trl.DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        theirs = float(trainer.compute_loss(policy, batch))
        metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
        ours_batch = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100),
        }
        reference_logps, _ = sequence_logps(reference, ours_batch)
        pairs = len(rows)
        ours_batch |= {"reference_chosen": reference_logps[:pairs], "reference_rejected": reference_logps[pairs:]}
        loss, (chosen, rejected, right) = preference_loss(policy, ours_batch, beta=beta, kind=kind)
    assert abs(theirs) > 1e-3 and abs(metrics["rewards/margins"]) > 1e-4  # not the trivial step-0 case
    assert float(loss) / pairs == pytest.approx(theirs, rel=1e-5)
    assert chosen / pairs == pytest.approx(metrics["rewards/chosen"], rel=1e-4, abs=1e-6)
    assert rejected / pairs == pytest.approx(metrics["rewards/rejected"], rel=1e-4, abs=1e-6)
    assert right / pairs == pytest.approx(metrics["rewards/accuracies"])


# The methods table -----------------------------------------------------------------------------------------


def test_the_methods_table_names_every_objective_and_weights():
    assert {(m.objective, m.weights) for m in METHODS.values()} == {
        ("SFT", "PEFT_ADAPTER"),
        ("SFT", "FULL"),
        ("DPO", "PEFT_ADAPTER"),
        ("DPO", "FULL"),
    }
    assert method_named("PEFT_ADAPTER").name == "lora" and method_named("dpo").module == "tunery.tuning.lora"
    assert method_of(TuningSpec(train="x", objective="dpo", method="full")).name == "dpo-full"
    with pytest.raises(Exception, match="expected one of lora"):
        method_named("orpo")


# Data in three shapes --------------------------------------------------------------------------------------

VERTEX = {
    "systemInstruction": {"parts": [{"text": "Be kind."}]},
    "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
    "completions": [
        {"score": 0, "completion": {"role": "model", "parts": [{"text": "go away"}]}},
        {"score": 1, "completion": {"role": "model", "parts": [{"text": "thank you"}]}},
    ],
}
OPENAI = {
    "input": {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello"}]},
    "preferred_output": [{"role": "assistant", "content": "thank you"}],
    "non_preferred_output": [{"role": "assistant", "content": "go away"}],
}
TRL = {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello"}]}
TRL |= {"chosen": [{"role": "assistant", "content": "thank you"}], "rejected": "go away"}


def test_the_three_shapes_read_as_the_same_pair():
    read = [parse_preference(row) for row in (VERTEX, OPENAI, TRL)]
    assert all(problems == [] for _, problems in read)
    first = read[0][0]
    assert first.chosen == "thank you" and first.rejected == "go away" and first.prompt.system == "Be kind."
    assert all((p.prompt, p.chosen, p.rejected) == (first.prompt, first.chosen, first.rejected) for p, _ in read)
    plain, problems = parse_preference({"prompt": "hello", "chosen": "thank you", "rejected": "go away"})
    assert not problems and plain.prompt.turns == first.prompt.turns


def bad_lines() -> list[object]:
    same = json.loads(json.dumps(VERTEX))
    same["completions"][0]["completion"]["parts"][0]["text"] = "thank you"
    scores = json.loads(json.dumps(VERTEX))
    scores["completions"][0]["score"] = 1
    ends_with_model = json.loads(json.dumps(VERTEX))
    ends_with_model["contents"].append({"role": "model", "parts": [{"text": "hm"}]})
    return [
        VERTEX,  # 1: fine
        same,  # 2
        scores,  # 3
        {k: v for k, v in OPENAI.items() if k != "non_preferred_output"},  # 4
        {**TRL, "rejected": [{"role": "user", "content": "go away"}]},  # 5
        ends_with_model,  # 6
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "yo"}]}]},  # 7
        "{not json",  # 8
        {**VERTEX, "completions": VERTEX["completions"][:1]},  # 9
    ]


EXPECTED = [
    (2, "completions[0]", "the same text as completions[1]"),
    (3, "completions[1].score", "both completions score 1"),
    (4, "non_preferred_output", "missing; a pair needs both answers"),
    (5, "rejected[0].role", "expected 'assistant'"),
    (6, "contents[1].role", "the prompt must end with a user turn"),
    (7, "line", "a supervised example in preference data"),
    (8, "line", "invalid JSON"),
    (9, "completions", "expected exactly two completions, got 1"),
]


def test_every_bad_preference_line_is_reported_by_line_and_field(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "bad.jsonl", bad_lines())
    report = read_examples(path, tokenizer=tiny_tokenizer(), objective="DPO")
    found = [(p.line, p.field, p.message) for p in report.errors]
    assert len(found) == len(EXPECTED), found
    for (line, field, message), (want_line, want_field, want) in zip(found, EXPECTED, strict=True):
        assert (line, field) == (want_line, want_field) and want in message, (line, field, message)
    assert len(report.pairs) == 1
    with pytest.raises(DatasetError, match="8 problems"):
        report.raise_for_errors()


def test_a_pair_longer_than_max_length_names_the_side_cut(tmp_path, tiny_tokenizer):
    long = {**TRL, "rejected": "go away " * 40}
    gone = {**TRL, "prompt": "hello " * 80}
    path = write(tmp_path / "long.jsonl", [long, gone])
    report = read_examples(path, tokenizer=tiny_tokenizer(), max_length=40, objective=None)
    warning = report.warnings[0]
    assert (warning.line, warning.field) == (1, "rejected") and "the rejected side is" in warning.message
    assert "truncated" in warning.message
    assert [(e.line, e.field) for e in report.errors] == [(2, "chosen[0].content"), (2, "rejected")]
    assert all("none of its answer is left" in e.message for e in report.errors)


def test_cli_validate_and_stats_of_preference_data(tmp_path, tiny_model, pairs):
    runner = CliRunner()
    bad = write(tmp_path / "bad.jsonl", bad_lines())
    result = runner.invoke(app, ["datasets", "validate", str(bad), "--model", str(tiny_model)])
    assert result.exit_code == 1
    assert f"{bad}:4: non_preferred_output: missing" in result.output.replace("\n", "")
    ok = runner.invoke(app, ["datasets", "validate", pairs["train"], "--model", str(tiny_model)])
    assert ok.exit_code == 0 and "32 preference pairs" in ok.output
    stats = runner.invoke(app, ["datasets", "stats", pairs["train"], "--model", str(tiny_model), "--json"])
    data = json.loads(stats.output)["preferenceOptimizationDataStats"]
    assert data["tuningDatasetExampleCount"] == 32
    assert data["chosenOutputTokenDistribution"]["min"] > 0 and data["rejectedOutputTokenDistribution"]["max"] > 0


def test_supervised_tuning_refuses_preference_lines_by_line(tmp_path, tiny_model, pairs):
    with pytest.raises(DatasetError) as caught:
        tune(TuningSpec(train=pairs["train"], base_model=str(tiny_model), output=str(tmp_path / "sft")))
    assert caught.value.problems[0].line == 1 and "tune preference data with DPO" in caught.value.problems[0].message
    assert not (tmp_path / "sft").exists()


# Training --------------------------------------------------------------------------------------------------


def policy_accuracy(model, tokenizer_path: Path, path: str) -> float:
    """The share of ``path``'s pairs whose chosen answer the model gives the higher log-probability."""
    from tunery.data.tokenize import encode_pair
    from tunery.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    report = read_examples(path, objective="DPO")
    encoded = [encode_pair(tokenizer, p, 256) for p in report.pairs]
    with torch.no_grad():
        logps, _ = sequence_logps(model, PairBatcher(tokenizer.pad_token_id)(encoded))
    n = len(encoded)
    return float((logps[:n] > logps[n:]).float().mean())


def test_a_synthetic_preference_is_learned_with_the_base_frozen(dpo_run, tiny_model, pairs):
    """Held-out pairs: the policy's own preference goes from about chance to ≥ 90 %, and so do the implicit rewards
    (``eval_rewards/accuracies``); every step logs TRL's metric names; the base weights are untouched."""
    from transformers import AutoModelForCausalLM

    from tunery.models.tuned import load_tuned

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = policy_accuracy(base, tiny_model, pairs["validation"])
    tuned, _ = load_tuned(dpo_run)
    after = policy_accuracy(tuned.get_base_model(), dpo_run, pairs["validation"])
    assert 0.25 <= before <= 0.75 and after >= 0.9, (before, after, metric_lines(dpo_run)[-1])
    lines = metric_lines(dpo_run)
    assert lines[0]["eval_rewards/accuracies"] == 0.0  # the reference is the policy at step 0: no margin yet
    assert lines[-1]["eval_rewards/accuracies"] >= 0.9 and lines[-1]["eval_rewards/margins"] > 0
    names = {"train_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert all(names <= set(line) for line in lines[1:])
    manifest = json.loads((dpo_run / "tunery.json").read_text())
    assert manifest["objective"] == "DPO" and manifest["hyperParameters"]["beta"] == 0.5
    assert manifest["tuningDataStats"]["preferenceOptimizationDataStats"]["tuningDatasetExampleCount"] == 32
    state = tuned.get_base_model().state_dict()
    for name, tensor in load_file(str(tiny_model / "model.safetensors")).items():
        module, leaf = name.rsplit(".", 1)
        key = f"{module}.base_layer.{leaf}" if f"{module}.base_layer.{leaf}" in state else name
        assert torch.equal(state[key], tensor), name


PINNED = [0.693147, 0.727632, 0.464027]  # train_loss of the first three steps (tiny model, seed 0, fp32)


def test_the_first_steps_loss_is_pinned(dpo_run):
    found = [line["train_loss"] for line in metric_lines(dpo_run) if "train_loss" in line][:3]
    assert found == pytest.approx(PINNED, abs=2e-5)


def test_a_cancelled_dpo_run_resumes_to_the_uninterrupted_result(dpo_run, pairs, tiny_model, tmp_path):
    calls = []
    run_dir = tmp_path / "cut"
    with pytest.raises(TuningCancelled):
        tune(dpo_spec(pairs, tiny_model, run_dir), Hooks(should_stop=lambda: calls.append(1) or len(calls) == 6))
    assert (run_dir / "reference.json").is_file()
    out = tune(TuningSpec(train="ignored", output=str(run_dir)), resume=True)
    a, b = load_file(str(out / ADAPTER)), load_file(str(dpo_run / ADAPTER))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["train_loss"] for m in metric_lines(out)[1:]] == [m["train_loss"] for m in metric_lines(dpo_run)[1:]]


@pytest.mark.parametrize("method", ["PEFT_ADAPTER", "FULL"])
def test_two_processes_end_with_the_weights_of_one(pairs, tiny_model, tmp_path, method):
    """DPO over 2 gloo processes, data parallel, the same global batch: the one-process weights and losses (fp32,
    within 1e-6; measured 2e-8). Every process computes the same reference log-probabilities."""
    options = {"method": method, "epochs": 1, "micro_batch_tokens": 96, "learning_rate_multiplier": 1}
    data = {**pairs, "validation": None}
    one = tune(dpo_spec(data, tiny_model, tmp_path / "one", **options))
    two = tune(dpo_spec(data, tiny_model, tmp_path / "two", processes=2, **options))
    name = ADAPTER if method == "PEFT_ADAPTER" else "model.safetensors"
    a, b = load_file(str(one / name)), load_file(str(two / name))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    losses = [[m["train_loss"] for m in metric_lines(run)] for run in (one, two)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert (one / "reference.json").read_text() == (two / "reference.json").read_text()


# Tuning from a tuned model ---------------------------------------------------------------------------------


def test_dpo_from_a_lora_sft_model_continues_its_adapter_and_records_the_chain(tuned_lora, pairs, tmp_path):
    """SFT → DPO: the SFT adapter trains on (the reference is the SFT model, not the bare base), the result is one
    adapter on the original base, and ``tunery.json`` names the chain with hashes."""
    from tunery.models.sources import sha256_file

    out = tune(dpo_spec(pairs, tuned_lora, tmp_path / "dpo", epochs=1))
    manifest, sft = (json.loads((d / "tunery.json").read_text()) for d in (out, tuned_lora))
    assert manifest["baseModel"] == sft["baseModel"]  # still one adapter on the original base
    [link] = manifest["tunedFrom"]
    assert link["id"] == sft["id"] and link["objective"] == "SFT" and link["tuningMode"] == "PEFT_ADAPTER"
    assert link["sha256"] == sha256_file(tuned_lora / ADAPTER) and link["baseModel"]["id"] == sft["baseModel"]["id"]
    sft_adapter, dpo_adapter = load_file(str(tuned_lora / ADAPTER)), load_file(str(out / ADAPTER))
    assert sft_adapter.keys() == dpo_adapter.keys()
    assert any(not torch.equal(sft_adapter[k], dpo_adapter[k]) for k in sft_adapter)
    first = metric_lines(out)[0]  # the reference is the SFT model: at step 0 the rewards are zero
    assert first["eval_rewards/margins"] == 0.0 and first["eval_loss"] == pytest.approx(math.log(2))


def test_sft_from_a_full_model_takes_it_as_the_new_base(tuned_full, make_train, tmp_path):
    out = tune(
        TuningSpec(train=str(make_train(8)), base_model=str(tuned_full), output=str(tmp_path / "again"), epochs=1)
    )
    manifest = json.loads((out / "tunery.json").read_text())
    assert manifest["baseModel"]["path"] == str(tuned_full.resolve())
    assert manifest["tunedFrom"][0]["tuningMode"] == "FULL" and manifest["tunedFrom"][0]["sha256"]


@pytest.mark.parametrize(
    "name", ["{id}", "models/{id}", "ft:smollm2:tenant:router:{id}", "projects/p/locations/us/models/{id}"]
)
def test_a_tuned_model_is_named_as_each_client_names_it(name, tuned_lora, tunery_home):
    from tunery.settings import tuned_models_dir
    from tunery.tuning.lineage import tuned_dir

    folder = tuned_models_dir() / "named-abc123"
    if not folder.exists():
        folder.mkdir(parents=True)
        (folder / "tunery.json").write_text((tuned_lora / "tunery.json").read_text())
    assert tuned_dir(name.format(id="named-abc123")) == folder.resolve()
    assert tuned_dir("smollm2-135m-instruct") is None
