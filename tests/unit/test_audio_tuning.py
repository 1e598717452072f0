"""Audio-language tuning (#15): Qwen2-Audio loss masks, refused media, and a tiny model that learns from samples.

The model is built from a config (random weights: a one-layer Whisper-style audio encoder of width 32, a
one-layer Qwen2 of hidden 32) with a tokenizer trained in memory, transformers' own ``WhisperFeatureExtractor``
(128 mel bins, as Qwen2-Audio's; 1 s chunks instead of 30 s, so a clip is 100 mel frames and 25 audio tokens)
and ``Qwen2AudioProcessor`` with its default chat template. Nothing comes from the Hub. Clips are 1 s sine
tones written as 16-bit WAV files with soundfile.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tunery.data.formats import Example, Part, Turn
from tunery.data.tokenize import IGNORE_INDEX
from tunery.models import multimodal as families
from tunery.tuning import multimodal

soundfile = pytest.importorskip("soundfile")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

RATE = 16000
WORDS = "system user assistant You are a helpful Audio is this tone low or high answer with one word and this one"
PROMPT = "is this tone low or high"
TONES = {"low": 220.0, "high": 1760.0}
AUDIO_TOKENS = 25  # 100 mel frames → 50 after the stride-2 convolution → 25 after the encoder's pooling

# A template that finds audio items by their ``audio`` key only, as Qwen2-Audio-7B-Instruct's own does
# (transformers' default template also accepts ``type == "audio"``).
KEYED_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([WORDS] * 3 + WORDS.split(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def qwen2_audio(template: str | None = None):
    from transformers import AutoModelForMultimodalLM, Qwen2AudioConfig, Qwen2AudioProcessor, WhisperFeatureExtractor

    t = tokenizer()
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=RATE, chunk_length=1)
    processor = Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=t, chat_template=template)
    config = Qwen2AudioConfig(
        audio_config=dict(
            d_model=32,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            num_mel_bins=128,
            max_source_positions=50,  # 100 mel frames (1 s) after the stride-2 convolution
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(t),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            pad_token_id=t.pad_token_id,
            bos_token_id=None,
            eos_token_id=t.eos_token_id,
        ),
        audio_token_index=t.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(0)
    return AutoModelForMultimodalLM.from_config(config), processor


def tone(freq: float, amplitude: float, seconds: float = 1.0) -> np.ndarray:
    n = int(RATE * seconds)
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / RATE)).astype(np.float32)


def wav(freq: float, amplitude: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(freq, amplitude), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def audio_part(freq: float, amplitude: float = 0.5) -> Part:
    return Part("inlineData", mime_type="audio/wav", data=base64.b64encode(wav(freq, amplitude)).decode())


def clips(rng: random.Random, per_label: int) -> list[tuple[str, float, float]]:
    """(label, frequency with ±5 % jitter, amplitude 0.2-0.9), alternating labels."""
    return [
        (label, freq * rng.uniform(0.95, 1.05), rng.uniform(0.2, 0.9))
        for _ in range(per_label)
        for label, freq in TONES.items()
    ]


@pytest.mark.parametrize("template", [None, KEYED_TEMPLATE], ids=["default-template", "keyed-template"])
def test_loss_mask_is_model_turns_and_end_of_turn(template: str | None) -> None:
    model, processor = qwen2_audio(template)
    family = families.require_family(model.config)
    assert family.name == "Qwen2-Audio"
    two_turns = Example(
        turns=(
            Turn("user", (audio_part(TONES["low"]), Part("text", PROMPT))),
            Turn("model", (Part("text", "low"),)),
            Turn("user", (Part("text", "and this one"), audio_part(TONES["high"]))),
            Turn("model", (Part("text", "high"),)),
        ),
        system="answer with one word",
        line=7,
    )
    # No system instruction: the template writes its own "You are a helpful assistant." line, never trained.
    short = Example(
        turns=(Turn("user", (audio_part(TONES["high"]), Part("text", PROMPT))), Turn("model", (Part("text", "high"),)))
    )
    batch, _ = multimodal.process(family, processor, [two_turns, short], None)  # padded: rows of unequal length
    tokenizer = processor.tokenizer
    placeholders = family.placeholder_ids(processor)
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert placeholders == {tokenizer.convert_tokens_to_ids(t) for t in family.placeholder_tokens}
    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    for row, answers in enumerate((["low", "high"], ["high"])):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        assert ids.count(audio_id) == AUDIO_TOKENS * len(answers), "one <|AUDIO|> per encoder frame, per clip"
        trained = [k for k, label in enumerate(labels) if label != IGNORE_INDEX]
        assert all(labels[k] == ids[k] for k in trained)
        assert not placeholders & {ids[k] for k in trained}
        pieces, current = [], []
        for k in trained:
            current.append(ids[k])
            if ids[k] == end:
                pieces.append(current)
                current = []
        assert not current
        assert [p[:-1] for p in pieces] == [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        # Every end of a model turn is trained; the system's and users' are not.
        assert sum(1 for k in trained if ids[k] == end) == len(answers) < ids.count(end)
    text = tokenizer.decode(batch["input_ids"][1])
    assert "You are a helpful assistant." in text  # the template's default system line is there, and masked
    # The forward pass takes the processor's tensors: the samples reach the language model's hidden states.
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert set(inputs) >= {"input_features", "feature_attention_mask"}
    hidden = multimodal.body(model)(**inputs, use_cache=False).last_hidden_state
    assert hidden.shape[:2] == batch["input_ids"].shape


def test_an_image_part_to_the_audio_model_is_refused_by_line(tmp_path: Path) -> None:
    """In the processor path and, for a model directory, in validation before anything is tuned."""
    from tunery.errors import DatasetError
    from tunery.models.sources import resolve_base
    from tunery.tuning import TuningSpec, tune

    model, processor = qwen2_audio()
    family = families.require_family(model.config)
    image = Part("inlineData", mime_type="image/png", data=base64.b64encode(b"\x89PNG\r\n\x1a\n").decode())
    example = Example(
        turns=(Turn("user", (image, Part("text", PROMPT))), Turn("model", (Part("text", "low"),))), line=4
    )
    with pytest.raises(
        DatasetError, match=r"line 4: contents\[0\]\.parts\[0\]: Qwen2-Audio models take text, audio, not image"
    ):
        multimodal.process(family, processor, [example], None)

    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    assert resolve_base(str(base)).modalities == ("text", "audio")
    good = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}, {"role": "model", "parts": [{"text": "low"}]}]}
    bad = {
        "contents": [
            {
                "role": "user",
                "parts": [{"inlineData": {"mimeType": "image/png", "data": image.data}}, {"text": PROMPT}],
            },
            {"role": "model", "parts": [{"text": "low"}]},
        ]
    }
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    spec = TuningSpec(
        train=str(train), base_model=str(base), method="FULL", epochs=1, output=str(tmp_path / "out"), device="cpu"
    )
    with pytest.raises(DatasetError) as info:
        tune(spec)
    assert f"{train}:2: contents[0].parts[0]" in str(info.value) and "image" in str(info.value)
    assert "text, audio" in str(info.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()

    # A clip longer than the extractor's chunk (1 s here, 30 s for Qwen2-Audio) would be cut: refused by line.
    long_clip = tmp_path / "long.wav"
    soundfile.write(long_clip, tone(TONES["low"], 0.5, seconds=2.0), RATE, subtype="PCM_16")
    clip = {"fileData": {"mimeType": "audio/wav", "fileUri": "long.wav"}}
    too_long = {"contents": [{"role": "user", "parts": [clip, {"text": PROMPT}]}, good["contents"][1]]}
    train.write_text(json.dumps(good) + "\n" + json.dumps(too_long) + "\n")
    spec = TuningSpec(
        train=str(train), base_model=str(base), method="FULL", epochs=1, output=str(tmp_path / "out2"), device="cpu"
    )
    with pytest.raises(
        DatasetError, match=rf"{re.escape(str(train))}:2: contents\[0\]\.parts\[0\]: .*2\.0 s long.*at most 1 s"
    ):
        tune(spec)


def test_lora_targets_the_language_model_only() -> None:
    model, _ = qwen2_audio()
    family = families.require_family(model.config)
    assert model.model.audio_tower is model.get_submodule(family.tower[0])
    assert model.model.multi_modal_projector is model.get_submodule(family.projector[0])
    language = multimodal.lora_targets(model, family)
    assert language and all(n.startswith("model.language_model.") for n in language)
    with_tower = multimodal.lora_targets(model, family, train_vision=True)
    assert set(language) < set(with_tower)
    assert {n for n in with_tower if n not in language} and all(
        n.startswith("model.audio_tower.") for n in with_tower if n not in language
    )
    assert not [n for n in with_tower if n.startswith("model.multi_modal_projector")]
    multimodal.freeze_media(model, family, train_projector=True)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (not name.startswith("model.audio_tower.")), name


@torch.no_grad()
def exact_match(model: torch.nn.Module, processor, items: list[tuple[str, float, float]]) -> float:
    """Greedy answers to the same prompt on each clip, compared whole with the label."""
    family = families.require_family(model.config)
    model.eval()
    right = 0
    for label, freq, amplitude in items:
        prompt = Example(turns=(Turn("user", (audio_part(freq, amplitude), Part("text", PROMPT))),))
        text = processor.apply_chat_template(
            families.chat_messages(prompt, family), tokenize=False, add_generation_prompt=True
        )
        samples = families.decoded_media(prompt, family, None, processor)["audio"]
        inputs = processor(text=[text], audio=samples, sampling_rate=RATE, return_tensors="pt")
        inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        right += answer.strip() == label
    return right / len(items)


def test_tiny_qwen2_audio_learns_low_from_high_tones(tmp_path: Path) -> None:
    """Only the samples carry the answer (one prompt for every example): tuned, held-out tones are named.

    FULL tuning with ``--train-projector`` (the audio tower frozen): the language model and the projector learn;
    WAV files beside the JSONL, referenced by relative ``fileUri``."""
    from transformers import AutoModelForMultimodalLM

    from tunery.models.loading import load_model, load_processor
    from tunery.tuning import TuningSpec, tune

    model, processor = qwen2_audio()
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    rng = random.Random(0)
    train, held_out = clips(rng, 6), clips(rng, 6)
    rng.shuffle(train)
    rows = []
    for k, (label, freq, amplitude) in enumerate(train):
        (tmp_path / f"{k}.wav").write_bytes(wav(freq, amplitude))
        clip = {"fileData": {"mimeType": "audio/wav", "fileUri": f"{k}.wav"}}
        rows.append(
            {
                "contents": [
                    {"role": "user", "parts": [clip, {"text": PROMPT}]},
                    {"role": "model", "parts": [{"text": label}]},
                ]
            }
        )
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = exact_match(model, processor, held_out)
    started = time.perf_counter()
    spec = TuningSpec(
        train=str(tmp_path / "train.jsonl"),
        base_model=str(base),
        method="FULL",
        epochs=25,
        batch_size=4,
        learning_rate_multiplier=100,
        train_projector=True,
        output=str(tmp_path / "tuned"),
        device="cpu",
    )
    tuned = tune(spec)
    seconds = time.perf_counter() - started
    tuned_model = load_model(tuned)
    assert type(tuned_model).__name__ == "Qwen2AudioForConditionalGeneration"
    after = exact_match(tuned_model, load_processor(tuned), held_out)
    print(
        f"qwen2_audio: exact match {before:.0%} -> {after:.0%} on {len(held_out)} held-out tones, "
        f"tuned in {seconds:.1f} s"
    )
    assert before <= 0.5
    assert after >= 0.95
    records = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[-1] < losses[0] - 1.0
    frozen = AutoModelForMultimodalLM.from_pretrained(base).state_dict()
    changed = {k for k, v in tuned_model.state_dict().items() if not torch.equal(v, frozen[k])}
    assert changed and not {k for k in changed if k.startswith("model.audio_tower.")}, "the audio tower is frozen"
    assert {k for k in changed if k.startswith("model.multi_modal_projector.")}, "the projector trains"
    assert {k for k in changed if k.startswith("model.language_model.")}


def test_lora_tuning_adapts_the_language_model_and_keeps_the_projector_whole(tmp_path: Path) -> None:
    """LoRA (``PEFT_ADAPTER``) on a Qwen2-Audio directory with inline (base64) WAV parts: adapters on the language
    model's linear layers only, the projector whole with ``--train-projector``, nothing of the audio tower. (The
    CLI's path to ``tune()`` is the VLM test's: ``test_vlm_tuning.test_cli_tunes_a_vlm_dir_with_the_projector_open``.)
    """
    from safetensors.torch import load_file

    from tunery.tuning import TuningSpec, tune

    model, processor = qwen2_audio()
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    rows = []
    for label, freq, amplitude in clips(random.Random(1), 2):
        clip = {"inlineData": {"mimeType": "audio/wav", "data": base64.b64encode(wav(freq, amplitude)).decode()}}
        rows.append(
            {
                "contents": [
                    {"role": "user", "parts": [clip, {"text": PROMPT}]},
                    {"role": "model", "parts": [{"text": label}]},
                ]
            }
        )
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TuningSpec(
        train=str(train),
        base_model=str(base),
        method="PEFT_ADAPTER",
        epochs=1,
        batch_size=2,
        train_projector=True,
        output=str(tmp_path / "tuned"),
        device="cpu",
    )
    output = tune(spec)
    keys = list(load_file(output / "adapter_model.safetensors"))
    assert any("multi_modal_projector" in k and "lora" not in k for k in keys), "the projector, whole"
    assert any(".language_model." in k and "lora_A" in k for k in keys)
    assert not [k for k in keys if "audio_tower" in k], "the audio tower stays frozen"
    assert (output / "processor_config.json").is_file()


def test_audio_is_processed_under_an_evaluation_autocast() -> None:
    """Evaluation collates inside bf16 autocast (CPU bf16-mixed): Whisper's log-mel must still be float32."""
    model, processor = qwen2_audio()
    family = families.require_family(model.config)
    example = Example(
        turns=(Turn("user", (audio_part(TONES["low"]), Part("text", PROMPT))), Turn("model", (Part("text", "low"),)))
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch, _ = multimodal.process(family, processor, [example], None)
    assert batch["input_features"].dtype == torch.float32
