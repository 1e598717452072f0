"""GGUF and Ollama export (``tunery.models.export``) on the tiny models: round trips, templates, bad input.

PYTHONPATH=$PWD .venv/bin/python -m pytest tests/unit/test_export.py -q
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from gotemplate import render as render_go

from tunery.errors import ConfigError, DiskFullError, ModelError
from tunery.models import export as export_module
from tunery.models.export import export_gguf
from tunery.models.loading import load_tokenizer


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.split(".")[-1] in ("tokens", "token_type", "merges"):
            continue
        out[key] = field.contents()
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    return {t.name: torch.from_numpy(dequantize(t.data, t.tensor_type).copy()) for t in reader.tensors}


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)


def _merged(tuned: Path):
    from tunery.models.tuned import load_tuned

    model, _ = load_tuned(tuned)
    return model.merge_and_unload().eval()


@pytest.fixture(scope="module")
def exported_f16(tuned_lora: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_gguf(tuned_lora, tmp_path_factory.mktemp("export") / "f16", quant="f16", ollama=True)


PROMPTS = ["my card never arrived, it has been two weeks", "the transfer failed twice today"]


def _ids(tokenizer, text: str) -> torch.Tensor:
    messages = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])


def test_the_f16_gguf_loads_in_transformers_with_the_merged_models_logits(tuned_lora, exported_f16):
    merged = _merged(tuned_lora)
    rounded = _merged(tuned_lora)
    with torch.no_grad():
        for _name, param in rounded.named_parameters():
            if param.ndim == 2:  # the GGUF keeps 2-D weights in f16, norms in f32
                param.copy_(param.half().float())
    back = _load_gguf(exported_f16.gguf).eval()
    tokenizer = load_tokenizer(tuned_lora)
    with torch.no_grad():
        for text in PROMPTS:
            ids = _ids(tokenizer, text)
            got, want, exact = back(ids).logits, rounded(ids).logits, merged(ids).logits
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()  # the same f16 weights
            assert (got - exact).abs().max() < 2e-2 * exact.abs().max()  # within f16 rounding of the fp32 model
            assert got[0, -1].argmax() == exact[0, -1].argmax()


def test_the_gguf_carries_the_training_template_stop_tokens_and_model_card(tuned_lora, exported_f16):
    from tunery.data.tokenize import end_of_turn_token, trained_spans

    tokenizer = load_tokenizer(tuned_lora)
    fields = _fields(exported_f16.gguf)
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    eot = end_of_turn_token(tokenizer)
    assert fields["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids(eot) != tokenizer.unk_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # llama.cpp's name for plain byte-level BPE: "gpt2" fails its load
    manifest = json.loads((tuned_lora / "tunery.json").read_text())
    assert fields["tunery.base_model"] == fields["tunery.tuned_from"] == manifest["baseModel"]["id"]
    assert json.loads(fields["tunery.data_stats"]) == manifest["tuningDataStats"]
    assert fields["general.name"] == manifest["displayName"]
    # the GGUF's template, as transformers reads it back, renders the training text byte for byte
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(str(exported_f16.gguf.parent), gguf_file=exported_f16.gguf.name)
    line = json.loads(Path(manifest["spec"]["train"]).read_text().splitlines()[0])
    from tunery.data.formats import parse_example

    messages = parse_example(line)[0].messages()
    training_text, _ = trained_spans(tokenizer, messages)
    assert back.apply_chat_template(messages, tokenize=False) == training_text
    assert back(training_text, add_special_tokens=False)["input_ids"] == tokenizer(
        training_text, add_special_tokens=False)["input_ids"]  # fmt: skip


@pytest.mark.parametrize("template", ["chatml", "smollm2", "gemma"])
def test_the_modelfile_template_renders_as_the_chat_template(template, tiny_tokenizer):
    from tunery.models.modelfile import go_template, read_turns

    tokenizer = tiny_tokenizer(template)
    go = go_template(read_turns(tokenizer))
    conversations = [
        [("system", "Route the ticket."), ("user", "My card never arrived")],
        [("user", "hello there")],
        [("system", "Be brief."), ("user", "one"), ("assistant", "two"), ("user", "three")],
    ]
    for conversation in conversations:
        messages = [{"role": r, "content": c} for r, c in conversation]
        want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        got = render_go(go, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]})
        assert got == want


def test_the_modelfile_names_the_gguf_stops_at_the_end_of_turn_and_keeps_the_shared_system(exported_f16):
    text = exported_f16.modelfile.read_text()
    lines = text.splitlines()
    assert f"FROM ./{exported_f16.gguf.name}" in lines
    assert [line for line in lines if line.startswith("PARAMETER stop")] == [
        'PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<eos>"']  # fmt: skip
    assert 'SYSTEM """Route the ticket."""' in lines  # every training example has it
    go = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    got = render_go(go, {"Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "U"}]})
    assert got == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_q8_0_reads_back_and_answers_as_the_merged_model(tuned_lora, tmp_path):
    exported = export_gguf(tuned_lora, tmp_path / "q8", quant="q8_0")
    f16_size = sum(p.numel() for p in _merged(tuned_lora).parameters()) * 2
    assert exported.files[exported.gguf.name] < 0.75 * f16_size
    assert _fields(exported.gguf)["general.file_type"] == 7  # MOSTLY_Q8_0
    back, merged = _load_gguf(exported.gguf).eval(), _merged(tuned_lora)
    tokenizer = load_tokenizer(tuned_lora)
    with torch.no_grad():
        for text in PROMPTS:
            ids = _ids(tokenizer, text)
            assert back(ids).logits[0, -1].argmax() == merged(ids).logits[0, -1].argmax()


def test_the_lora_adapter_gguf_adds_up_to_the_merged_model(tuned_lora, tiny_model, tmp_path):
    """base GGUF + α/r · B·A of the adapter GGUF = merged GGUF, tensor by tensor in llama.cpp's layout."""
    adapter = export_gguf(tuned_lora, tmp_path / "adapter", quant="f32", adapter_only=True, ollama=True)
    base = _tensors(export_gguf(tiny_model, tmp_path / "base", quant="f32").gguf)
    merged = _tensors(export_gguf(tuned_lora, tmp_path / "merged", quant="f32").gguf)
    fields, lora = _fields(adapter.gguf), _tensors(adapter.gguf)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    rank = json.loads((tuned_lora / "adapter_config.json").read_text())["r"]
    scale = fields["adapter.lora.alpha"] / rank
    names = sorted({n.rsplit(".", 1)[0] for n in lora})
    assert any(".attn_q." in n for n in names) and any(".attn_k." in n for n in names)
    for name in names:
        delta = scale * lora[name + ".lora_b"] @ lora[name + ".lora_a"]
        assert torch.allclose(base[name] + delta, merged[name], atol=1e-5), name
        assert delta.abs().max() > 0
    lines = adapter.modelfile.read_text().splitlines()
    assert f"ADAPTER ./{adapter.gguf.name}" in lines
    assert "FROM ./chatml-f32.gguf" in lines  # the name exporting the base at that quant gives


# --- bad input -----------------------------------------------------------------------------------------------


def test_bad_requests_are_refused_before_anything_is_written(tuned_lora, tuned_full, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--quant 'q3'"):
        export_gguf(tuned_lora, tmp_path / "a", quant="q3")
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export_gguf(tuned_lora, tmp_path / "exists")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="llama-quantize.*not on PATH"):
        export_gguf(tuned_lora, tmp_path / "k", quant="q4_k_m")
    with pytest.raises(ConfigError, match="not a LoRA tuned model"):
        export_gguf(tuned_full, tmp_path / "b", adapter_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_an_unknown_family_is_a_clear_error_and_leaves_nothing(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer("chatml")
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=1)
    )
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "out"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(
        ModelError, match="knows the architectures Gemma3ForCausalLM, LlamaForCausalLM.*; this model is GPT2LMHeadModel"
    ):
        export_gguf(tmp_path / "gpt2", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_written_file(tuned_lora, tmp_path, monkeypatch):
    from tunery.models import gguf

    real = gguf.write_file

    def fills_the_disk(path, *args, **kwargs):
        real(path, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(gguf, "write_file", fills_the_disk)
    with pytest.raises(DiskFullError, match="export folder"):
        export_gguf(tuned_lora, tmp_path / "full")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(export_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(DiskFullError, match="needs about"):
        export_gguf(tuned_lora, tmp_path / "small")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_exports_and_prints_what_it_wrote(tuned_lora, tmp_path):
    from typer.testing import CliRunner

    from tunery.cli import app

    result = CliRunner().invoke(app, ["export", str(tuned_lora), "--quant", "q4_0", "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "q4_0" in result.output and (tmp_path / "o" / "tiny-PEFT_ADAPTER-q4_0.gguf").is_file()
    again = CliRunner().invoke(app, ["export", str(tuned_lora), "--output", str(tmp_path / "o")])
    assert again.exit_code == 1 and "already exists" in again.output


def test_a_gemma3_model_round_trips_with_its_norms_and_attention_settings(tiny_tokenizer, tmp_path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tiny_tokenizer("gemma")
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=256, query_pre_attn_scalar=256, max_position_embeddings=512,  # 270m's heads
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0, 0.3)  # Gemma's norms are stored as (scale - 1): make them count
    model.save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    exported = export_gguf(tmp_path / "gemma", tmp_path / "out", quant="f32", ollama=True)
    fields = _fields(exported.gguf)
    assert fields["general.architecture"] == "gemma3"
    assert fields["gemma3.attention.key_length"] == 256 and fields["gemma3.attention.sliding_window"] == 4096
    back = _load_gguf(exported.gguf).eval()
    ids = _ids(tokenizer, PROMPTS[0])
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, model(ids).logits, atol=1e-4)
    assert 'PARAMETER stop "<end_of_turn>"' in exported.modelfile.read_text().splitlines()


def test_a_chat_template_the_modelfile_cannot_follow_is_refused(tiny_tokenizer):
    """Turns numbered by position have no fixed opening text: no TEMPLATE is written rather than a wrong one."""
    import copy

    from tunery.models.modelfile import read_turns

    tokenizer = copy.deepcopy(tiny_tokenizer("chatml"))
    tokenizer.chat_template = (
        "{% for m in messages %}{{ loop.index }}. {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}{{ messages | length + 1 }}. assistant: {% endif %}"
    )
    with pytest.raises(ModelError, match="cannot write an Ollama TEMPLATE"):
        read_turns(tokenizer)
