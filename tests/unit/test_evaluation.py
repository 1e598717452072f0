"""Evaluation on tiny models: prompts from YAML, predictions kept, compare reports, robustness, error analysis,
data advice, the evaluation stored after tuning, and the CLI's errors.

    .venv/bin/python -m pytest tests/unit/test_evaluation.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunery import compare, evaluate
from tunery.cli import app
from tunery.data.validation import read_examples
from tunery.errors import ConfigError, DatasetError
from tunery.evaluation import (
    Candidate,
    Prompt,
    data_advice,
    load_evaluation,
    load_prompt,
    parse_candidate,
    parse_perturbations,
    perturb_example,
    restrict,
)
from tunery.evaluation.perturb import perturb_text

runner = CliRunner()


@pytest.fixture(scope="module")
def eval_dir(data_dir: Path) -> Path:
    return data_dir / "eval"


@pytest.fixture(scope="module")
def tiny(tiny_model_factory) -> Path:
    return tiny_model_factory("chatml")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# prompts -------------------------------------------------------------------------------------------------------


def test_prompt_yaml_with_balanced_shots(eval_dir, data_dir):
    prompt = load_prompt(eval_dir / "few_shot.yaml")
    assert prompt.name == "few-shot" and prompt.template == "Ticket: {input}\nLabel:"
    assert [s.target for s in prompt.shots] == ["card_arrival", "card_declined", "transfer_failed"]
    request = prompt.apply(read_examples(data_dir / "classify_openai.jsonl").examples[0])
    roles = [t.role for t in request.turns]
    assert roles == ["user", "model"] * 3 + ["user"]
    assert request.turns[-1].text.startswith("Ticket: ") and request.turns[-1].text.endswith("\nLabel:")
    assert request.system.startswith("Route the ticket to one team")


def test_prompt_template_keeps_braces_in_text(data_dir):
    prompt = Prompt(template='Return JSON like {"label": ...} for: {input}')
    request = prompt.apply(read_examples(data_dir / "classify_gemini.jsonl").examples[0])
    assert request.turns[-1].text.startswith('Return JSON like {"label": ...} for: my card')


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_template.yaml", "template: 'Ticket without a slot' has no {input}"),
        ("bad_key.yaml", "unknown key(s) few_shot"),
        ("bad_yaml.yaml", "invalid YAML"),
        ("bad_shots.yaml", "shots: 2 needs shots_file"),
        ("missing.yaml", "no such prompt file"),
    ],
)
def test_prompt_yaml_errors_name_the_file_and_key(eval_dir, name, message):
    with pytest.raises(ConfigError) as info:
        load_prompt(eval_dir / name)
    assert str(eval_dir / name) in str(info.value) and message in str(info.value)


def test_parse_candidate(eval_dir, tiny):
    assert parse_candidate(f"base={tiny}") == Candidate("base", str(tiny))
    with_prompt = parse_candidate(f"base={tiny}:{eval_dir / 'zero_shot.yaml'}")
    assert with_prompt.model == str(tiny) and with_prompt.prompt.name == "zero-shot"
    for bad in ("nameonly", "=model", "name="):
        with pytest.raises(ConfigError, match="NAME=MODEL"):
            parse_candidate(bad)


# perturbations -------------------------------------------------------------------------------------------------


def test_perturbations_are_seeded_and_change_only_the_input(data_dir):
    example = read_examples(data_dir / "classify_gemini.jsonl").examples[0]
    for name in ("typos", "case", "whitespace"):
        once, twice = perturb_example(example, name, seed=1), perturb_example(example, name, seed=1)
        assert once == twice
        assert once.turns[0].text != example.turns[0].text
        assert once.target == example.target and once.system == example.system
    texts = {perturb_text("please route this ticket to the right team today", "typos", seed) for seed in range(5)}
    assert len(texts) > 1
    assert perturb_text("ab", "typos") == "ab"  # nothing long enough to misspell
    assert parse_perturbations("typos, case,typos") == ("typos", "case")
    with pytest.raises(ConfigError, match="--perturb emoji: unknown"):
        parse_perturbations("typos,emoji")


# evaluate and compare on a tiny model --------------------------------------------------------------------------


def test_evaluate_keeps_every_prediction_beside_the_metrics(tiny, data_dir, tmp_path):
    run = evaluate(tiny, data_dir / "classify_gemini.jsonl", output=tmp_path, perturb="case", max_output_tokens=4)
    e = run.comparison.evaluations[0]
    assert e.task.kind == "classification" and e.task.labels == ("card_arrival", "card_declined", "transfer_failed")
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 10
    first = json.loads(lines[0])
    fields = {"line", "input", "target", "output", "label", "score", "prompt_tokens", "output_tokens", "latency_ms"}
    assert fields <= set(first)
    assert all(json.loads(line)["output_tokens"] <= 4 for line in lines)
    stored = json.loads((tmp_path / "evaluation.json").read_text())
    metrics = stored["metrics"]
    assert {"accuracy", "macro_f1", "per_class", "confusion", "latency_ms_p50", "latency_ms_p95"} <= set(metrics)
    assert metrics["latency_ms_p50"] <= metrics["latency_ms_p95"]
    assert metrics["prompt_tokens_mean"] == pytest.approx(sum(json.loads(x)["prompt_tokens"] for x in lines) / 10)
    assert stored["robustness"]["case"]["metric"] == "accuracy"
    assert len((tmp_path / "predictions-case.jsonl").read_text().splitlines()) == 10
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()
    reloaded = load_evaluation(tmp_path)
    assert reloaded.summary["accuracy"] == e.summary["accuracy"] and len(reloaded.predictions) == 10


def test_compare_writes_the_report_with_table_and_plots(tiny, data_dir, eval_dir, tmp_path):
    run = compare(
        data_dir / "classify_openai.jsonl",
        [f"zero-shot={tiny}:{eval_dir / 'zero_shot.yaml'}", f"few-shot={tiny}:{eval_dir / 'few_shot.yaml'}"],
        output=tmp_path,
        max_output_tokens=3,
        input_price=1.0,
        output_price=2.0,
    )
    headers, rows = run.comparison.table()
    assert headers[:3] == ["candidate", "accuracy", "macro-F1"] and "$ / 1k requests" in headers
    zero, few = run.comparison.evaluations
    assert few.summary["prompt_tokens_mean"] > zero.summary["prompt_tokens_mean"]
    cost = 1000 * (zero.summary["prompt_tokens_mean"] * 1.0 + zero.summary["output_tokens_mean"] * 2.0) / 1e6
    assert rows[0][headers.index("$ / 1k requests")] == f"{cost:.4f}"
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # overview, F1 bars, confusion matrices, calibration
    markdown = (tmp_path / "report.md").read_text()
    assert "| candidate | accuracy |" in markdown and "](plots/confusion-matrices.png)" in markdown
    assert "Error analysis: few-shot" in markdown
    for name in ("overview", "f1-bars", "confusion-matrices"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    for slug in ("zero-shot", "few-shot"):
        assert len((tmp_path / "candidates" / slug / "predictions.jsonl").read_text().splitlines()) == 10
    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert [c["candidate"]["name"] for c in summary["candidates"]] == ["zero-shot", "few-shot"]


def test_extraction_and_generation_are_inferred_and_scored(tiny, eval_dir, tmp_path):
    extraction = evaluate(tiny, eval_dir / "extraction.jsonl", output=tmp_path / "x", max_output_tokens=4)
    e = extraction.comparison.evaluations[0]
    assert e.task.kind == "extraction"
    assert {"json_valid", "exact_match", "field_precision", "field_recall", "field_f1", "per_field"} <= set(e.summary)
    assert e.errors["invalid_json"] == 10 - round(e.summary["json_valid"] * 10)
    generation = evaluate(tiny, eval_dir / "generation.jsonl", output=tmp_path / "g", max_output_tokens=4)
    g = generation.comparison.evaluations[0]
    assert g.task.kind == "generation" and {"exact_match", "rougeL", "chrf"} <= set(g.summary)
    assert g.errors["lowest_scores"] and "ROUGE-L" in (tmp_path / "g" / "report.md").read_text()


def test_error_analysis_and_restrict(tiny, data_dir, tmp_path):
    run = evaluate(tiny, data_dir / "classify_gemini.jsonl", output=tmp_path, max_output_tokens=3, advice=False)
    e = run.comparison.evaluations[0]
    errors = e.errors
    assert errors["errors"] == sum(p.score < 1 for p in e.predictions)
    confusions = errors["confusions"]
    assert sum(c["count"] for c in confusions) <= errors["errors"]
    assert confusions == sorted(confusions, key=lambda c: -c["count"])
    for c in confusions:
        assert c["target"] != c["predicted"] and 1 <= len(c["examples"]) <= 3
    half = restrict(e, [p.line for p in e.predictions[:5]])
    assert half.summary["examples"] == 5 and [p.line for p in half.predictions] == [1, 2, 3, 4, 5]


# what is evaluated is what is served --------------------------------------------------------------------------


@pytest.fixture
def served_int8(monkeypatch):
    """The model server's form forced to int8 (weight-only, bf16 activations: its kernel runs on AVX2 too)."""
    from tunery.serving.quantized import int8_kernel_works

    if not int8_kernel_works():
        pytest.skip("no int8 weight kernel in this torch")
    monkeypatch.setenv("TUNERY_SERVING_WEIGHTS", "int8")
    monkeypatch.delenv("TUNERY_EVALUATION_WEIGHTS", raising=False)
    return monkeypatch


def test_evaluation_measures_the_served_weights_beside_fp32(served_int8, tiny, data_dir, tmp_path):
    run = evaluate(tiny, data_dir / "classify_gemini.jsonl", output=tmp_path / "int8", max_output_tokens=3, limit=4,
                   advice=False)  # fmt: skip
    e = run.comparison.evaluations[0]
    assert e.weights == "int8" and e.reference is not None and e.reference.weights == "fp32"
    assert len(e.reference.predictions) == 4
    stored = json.loads((tmp_path / "int8" / "evaluation.json").read_text())
    assert stored["weights"] == "int8" and stored["reference"]["weights"] == "fp32"
    assert stored["reference"]["metrics"]["accuracy"] == e.reference.summary["accuracy"]
    same = sum(p.output == r.output for p, r in zip(e.predictions, e.reference.predictions, strict=True))
    assert stored["reference"]["agreement"] == {"same": same, "examples": 4}
    headers, rows = run.comparison.table()
    assert rows[0][headers.index("weights")] == "int8" and rows[0][headers.index("answers as fp32")] == f"{same}/4"
    assert rows[0][headers.index("accuracy (fp32)")] == f"{e.reference.summary['accuracy']:.1%}"
    markdown = (tmp_path / "int8" / "report.md").read_text()
    assert "## Served weights beside fp32" in markdown and "| int8 |" in markdown and "| fp32 |" in markdown
    reloaded = load_evaluation(tmp_path / "int8")
    assert reloaded.weights == "int8" and reloaded.reference is not None and reloaded.reference.weights == "fp32"
    assert [p.output for p in reloaded.reference.predictions] == [p.output for p in e.reference.predictions]

    served_int8.setenv("TUNERY_SERVING_WEIGHTS", "fp32")  # served in fp32: one score, named
    run = evaluate(tiny, data_dir / "classify_gemini.jsonl", output=tmp_path / "fp32", max_output_tokens=3, limit=4,
                   advice=False)  # fmt: skip
    e = run.comparison.evaluations[0]
    assert e.weights == "fp32" and e.reference is None
    stored = json.loads((tmp_path / "fp32" / "evaluation.json").read_text())
    assert stored["weights"] == "fp32" and "reference" not in stored
    headers, rows = run.comparison.table()
    assert "weights" not in headers and not any("fp32)" in h for h in headers)  # one form: named once, not per row
    report = (tmp_path / "fp32" / "report.md").read_text()
    assert "Weights measured: fp32 " in report and "Served weights beside fp32" not in report


def test_the_weights_option_measures_fp32_alone_or_a_given_form(served_int8, tiny, data_dir, tmp_path):
    result = invoke("evaluate", tiny, "--data", data_dir / "classify_gemini.jsonl", "--output", tmp_path / "a",
                    "--max-tokens", "2", "--limit", "2", "--weights", "fp32", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "evaluation.json").read_text())["weights"] == "fp32"
    assert not (tmp_path / "a" / "predictions-fp32.jsonl").exists()
    served_int8.setenv("TUNERY_EVALUATION_WEIGHTS", "bf16")
    run = evaluate(tiny, data_dir / "classify_gemini.jsonl", output=tmp_path / "b", max_output_tokens=2, limit=2)
    assert [run.comparison.evaluations[0].weights, run.comparison.evaluations[0].reference.weights] == ["bf16", "fp32"]
    with pytest.raises(ConfigError, match="weights 'int3'"):
        evaluate(tiny, data_dir / "classify_gemini.jsonl", output=tmp_path / "c", limit=2, weights="int3")


def test_the_evaluation_after_tuning_and_the_sdk_model_use_the_served_weights(served_int8, tuned_lora, data_dir,
                                                                             tmp_path):  # fmt: skip
    import shutil

    from tunery.evaluation.tuned import evaluate_tuned
    from tunery.sdk.generative import GenerativeModel

    tuned = shutil.copytree(tuned_lora, tmp_path / "tuned")  # the session's fixture keeps its own evaluation
    evaluation = evaluate_tuned(tuned, data_dir / "classify_openai.jsonl")
    assert evaluation is not None and evaluation.weights == "int8" and evaluation.reference is not None
    stored = json.loads((tuned / "evaluation.json").read_text())
    assert stored["weights"] == "int8" and stored["reference"]["metrics"]["examples"] == 10
    assert len((tuned / "predictions-fp32.jsonl").read_text().splitlines()) == 10
    model = GenerativeModel(tuned)
    answer = model.generate_content("my card never arrived", {"maxOutputTokens": 2})
    assert model.weights == answer.weights == "int8"
    assert GenerativeModel(tuned, weights="fp32").weights == "fp32"


# data advice ---------------------------------------------------------------------------------------------------


def test_data_advice_finds_every_problem(eval_dir, tiny_tokenizer):
    prompts = read_examples(eval_dir / "advice_prompts.jsonl", require_model_turn=False).examples
    advice = data_advice(eval_dir / "advice_train.jsonl", prompts, tokenizer=tiny_tokenizer("chatml"), max_length=20)
    assert advice["exact_duplicates"] == [{"lines": [1, 2], "input": "my card never arrived"}]
    assert advice["conflicting_labels"][0]["answers"] == {"card_arrival": [1, 2], "card_declined": [3]}
    assert advice["class_balance"]["counts"]["card_arrival"] == 7 and advice["class_balance"]["imbalanced"]
    assert advice["truncated"]["lines"]  # max_length 20 cuts the longer examples
    assert advice["near_duplicates"]["pairs"] >= 1
    assert all(p["similarity"] >= 0.95 for p in advice["near_duplicates"]["top"])
    coverage = advice["coverage"]
    assert coverage["least_covered"][0]["input"].startswith("what is the capital of mongolia")
    assert coverage["distance_max"] > coverage["distance_median"] >= 0
    assert len(advice["advice"]) >= 4


# automatic after tuning ----------------------------------------------------------------------------------------


def test_tuning_with_validation_stores_its_evaluation(tuned_lora, data_dir):
    stored = load_evaluation(tuned_lora)
    assert stored is not None and stored.task.kind == "classification"
    assert len(stored.predictions) == len(read_examples(data_dir / "classify_openai.jsonl").examples)
    longest = max(len(p.target) for p in stored.predictions)  # in characters: at least one token each
    assert all(p.output_tokens <= longest + 8 for p in stored.predictions)
    assert json.loads((tuned_lora / "evaluation.json").read_text())["metrics"]["examples"] == 10


def test_compare_with_a_tuned_model_adds_loss_curves_and_data_advice(tuned_lora, tiny, data_dir, tmp_path):
    result = invoke("compare", "--data", data_dir / "classify_openai.jsonl", "--candidate", f"base={tiny}",
                    "--candidate", f"tuned={tuned_lora}", "--output", tmp_path, "--max-tokens", "3",
                    "--limit", "4")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "candidate" in result.output and "tuned" in result.output and "report:" in result.output
    assert (tmp_path / "plots" / "loss-curves.png").is_file()
    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert summary["dataAdvice"]["examples"] == 20  # the tuned model's own training file
    assert summary["candidates"][1]["metrics"]["examples"] == 4


# the CLI -------------------------------------------------------------------------------------------------------


def test_cli_evaluate_prints_the_table(tiny, data_dir, tmp_path):
    result = invoke("evaluate", tiny, "--data", data_dir / "classify_gemini.jsonl", "--output", tmp_path,
                    "--max-tokens", "2", "--limit", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "chatml: accuracy" in result.output and "fp32 weights" in result.output and "$ / 1k" in result.output
    assert "examples answered: 0/3" in result.output and "examples answered: 3/3" in result.output  # in a log too
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "bad/invalid_json.jsonl"], "invalid_json.jsonl:"),
        (["--data", "nope.jsonl"], "nope.jsonl: no such file"),
        (["--data", "classify_gemini.jsonl", "--task", "summaries"], "--task 'summaries'"),
        (["--data", "classify_gemini.jsonl", "--task", "extraction"], "classify_gemini.jsonl:1: target"),
        (["--data", "classify_gemini.jsonl", "--perturb", "emoji"], "--perturb emoji: unknown"),
        (["--data", "classify_gemini.jsonl", "--prompt", "eval/bad_key.yaml"], "unknown key(s) few_shot"),
    ],
)
def test_cli_bad_input_exits_1_with_a_clear_message(tiny, data_dir, args, message):
    args = [str(data_dir / a) if a.endswith((".jsonl", ".yaml")) else a for a in args]
    result = invoke("evaluate", tiny, *args)
    assert result.exit_code == 1
    assert message in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_cli_compare_rejects_a_bad_candidate(data_dir):
    result = invoke("compare", "--data", data_dir / "classify_gemini.jsonl", "--candidate", "just-a-model")
    assert result.exit_code == 1 and "NAME=MODEL" in result.output


def test_cli_advise(eval_dir):
    result = invoke("advise", eval_dir / "advice_train.jsonl", "--prompts", eval_dir / "advice_prompts.jsonl", "--json")
    assert result.exit_code == 0, result.output
    advice = json.loads(result.output)
    assert advice["examples"] == 10 and advice["coverage"]["prompts"] == 2


def test_advice_on_an_invalid_training_file_names_the_lines(data_dir):
    with pytest.raises(DatasetError) as info:
        data_advice(data_dir / "bad" / "mixed.jsonl")
    assert info.value.problems and all(p.line >= 1 for p in info.value.problems)
