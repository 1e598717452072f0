"""vLLM as the model host: the adapter checks, the launch command and the request translation run anywhere;
the ``gpu`` test starts vLLM for real (skipped without CUDA and vLLM).

.venv/bin/python -m pytest tests/unit/test_vllm.py -q
"""

from __future__ import annotations

import json
import shutil

import pytest

from tunery.errors import ConfigError
from tunery.serving import vllm


def _adapter(tmp_path, tuned_lora, **changes):
    target = tmp_path / "adapter"
    shutil.copytree(tuned_lora, target)
    config = json.loads((target / "adapter_config.json").read_text())
    config.update(changes)
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


def test_a_tunery_adapter_is_one_vllm_serves(tuned_lora):
    check = vllm.check_adapter("t", tuned_lora, max_lora_rank=16)
    assert check.ok, check.problems


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"r": 32}, "rank 32 is over --max-lora-rank 16"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj", "rotary_emb"]}, "rotary_emb"),
        ({"target_modules": ".*proj"}, "pattern"),
        ({"peft_type": "IA3"}, "LoRA adapters only"),
    ],
)
def test_adapters_vllm_cannot_serve_are_named_with_the_reason(tmp_path, tuned_lora, changes, reason):
    check = vllm.check_adapter("t", _adapter(tmp_path, tuned_lora, **changes), max_lora_rank=16)
    assert not check.ok and any(reason in p for p in check.problems), check.problems


def test_a_full_fine_tune_is_not_an_adapter(tuned_full):
    assert "full fine-tune" in vllm.check_adapter("f", tuned_full).problems[0]


def test_host_leaves_out_adapters_it_cannot_serve(tmp_path, tuned_lora):
    bad = _adapter(tmp_path, tuned_lora, r=64)
    host = vllm.VllmHost("base", {"good": str(tuned_lora), "bad": str(bad)}, port=8001, max_lora_rank=16)
    assert list(host.adapters) == ["good"] and [c.name for c in host.skipped] == ["bad"]
    command = host.command()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == "base" and "--enable-lora" in command
    assert command[command.index("--max-lora-rank") + 1] == "16" and command[command.index("--port") + 1] == "8001"
    modules = [json.loads(m) for m in command[command.index("--lora-modules") + 1 :]]
    assert modules == [{"name": "good", "path": str(tuned_lora), "base_model_name": "base"}]


def test_the_host_serves_every_tenants_tuned_models_of_its_base_from_the_store(tmp_path):
    from tunery.jobs.store import Store, TunedModel

    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    for model_id, tenant, base in (("a", "acme", "tiny"), ("b", "globex", "tiny"), ("c", "acme", "other")):
        path = f"/tuned/{model_id}"
        store.add_tuned_model(TunedModel(model_id, tenant, "j", model_id, base, "PEFT_ADAPTER", path, "t"))
    assert vllm.stored_adapters(store, "tiny") == {"a": "/tuned/a", "b": "/tuned/b"}
    assert vllm.stored_adapters(store, "none") == {}


def test_both_model_hosts_are_generation_hosts():
    from tunery.serving.process import GenerationHost, ModelHost

    assert isinstance(ModelHost(), GenerationHost)  # starts nothing until its first call
    assert isinstance(vllm.VllmHost("tiny"), GenerationHost)


def test_the_vllm_host_unloads_an_evicted_adapter_and_counts_tokens_awaited(monkeypatch, tmp_path, tuned_lora):
    import asyncio

    host = vllm.VllmHost("tiny", {"router": str(tuned_lora)})
    assert not host.evict(str(tuned_lora))  # no server started: nothing loaded, nothing started
    posted = []

    def post(path, body):
        posted.append((path, body))
        return {"count": 7}

    monkeypatch.setattr(host, "_post", post)
    host._external = True  # as if attached to a running server
    assert asyncio.run(host.acount_tokens("tiny", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})) == {
        "totalTokens": 7
    }
    assert host.evict(str(tuned_lora)) and posted[-1] == ("/v1/unload_lora_adapter", {"lora_name": "router"})
    assert not host.evict(str(tuned_lora)) and host.adapters == {}


def test_launch_command_checks_the_rank_and_picks_the_smallest_covering_one():
    with pytest.raises(ConfigError, match="max-lora-rank 12"):
        vllm.launch_command("m", {}, port=1, max_lora_rank=12)
    assert vllm.max_lora_rank_for([4, 8]) == 8 and vllm.max_lora_rank_for([9]) == 16
    assert "--lora-modules" not in vllm.launch_command("m", {}, port=1)


def test_gemini_requests_become_chat_completions_and_back():
    body = vllm.chat_request("ad", {
        "systemInstruction": {"parts": [{"text": "Route the ticket."}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "yes"}]},
                     {"role": "user", "parts": [{"text": "card?"}]}],
        "generationConfig": {"maxOutputTokens": 9, "temperature": 0.5, "topK": 3, "seed": 7, "stopSequences": ["x"],
                             "responseMimeType": "application/json",
                             "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}}},
    })  # fmt: skip
    assert body["messages"] == [
        {"role": "system", "content": "Route the ticket."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "card?"},
    ]
    assert (body["model"], body["max_tokens"], body["temperature"], body["top_k"], body["seed"], body["stop"]) == (
        "ad", 9, 0.5, 3, 7, ["x"])  # fmt: skip
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"] == {"a": {"type": "integer"}} and schema["additionalProperties"] is False
    enum = vllm.chat_request("m", {"contents": [{"parts": [{"text": "q"}]}], "generationConfig": {
        "responseMimeType": "text/x.enum", "responseSchema": {"type": "STRING", "enum": ["a", "b"]}}})  # fmt: skip
    assert enum["guided_choice"] == ["a", "b"]
    answer = {"choices": [{"message": {"content": "{\"a\": 1}"}, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 3}}  # fmt: skip
    response = vllm.gemini_response(answer, "tuned", 12.0)
    assert response["candidates"][0]["content"]["parts"][0]["text"] == '{"a": 1}'
    assert response["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert response["usageMetadata"] == {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8}


def test_without_vllm_the_engine_says_what_is_missing():
    pytest.importorskip("tunery")
    if vllm.importlib_available():
        pytest.skip("vLLM is installed here")
    with pytest.raises(ConfigError, match="vllm package"):
        vllm.require_vllm()


@pytest.mark.gpu
def test_vllm_serves_the_base_and_an_adapter(tiny_model, tuned_lora):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not vllm.importlib_available():
        pytest.skip("needs CUDA and vLLM")
    with vllm.VllmHost(str(tiny_model), {"tuned": str(tuned_lora)}, max_lora_rank=16) as host:
        host.start()
        request = {
            "contents": [{"parts": [{"text": "my card never arrived"}]}],
            "generationConfig": {
                "maxOutputTokens": 8,
                "responseMimeType": "text/x.enum",
                "responseSchema": {"enum": ["yes", "no"]},
            },
        }
        for model in (str(tiny_model), str(tuned_lora)):
            response = host.generate(model, request)
            assert response["candidates"][0]["content"]["parts"][0]["text"] in ("yes", "no")
        replies = host.generate_batch([{"model": str(tuned_lora), "request": request}] * 4)
        assert all(isinstance(r, dict) for r in replies)
