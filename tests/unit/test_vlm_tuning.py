"""Vision-language tuning (#15): loss masks per family and a tiny model that learns from pixels alone.

Every model here is built from a config (random weights, hidden 32, one layer, 32-pixel images) with a
tokenizer trained in memory and the family's own image processor and processor classes: nothing from the
Hub. The chat templates below render each family's conversation format (turn markers, image items).
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from pathlib import Path

import pytest
import torch

from tunery.data.formats import Example, Part, Turn
from tunery.data.tokenize import IGNORE_INDEX
from tunery.models import multimodal as families
from tunery.tuning import multimodal

pytest.importorskip("PIL")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "system user assistant model Assistant User what colour is this square answer with one word red green blue yellow"
)
IMAGE = 32


def tokenizer(specials, **named):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([WORDS] * 3 + WORDS.split(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def text_dims(vocab, **extra):
    return dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        **extra,
    )


QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2_vl():
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor

    from tunery.models.loading import processor_class

    t = tokenizer(
        [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    ip = Qwen2VLImageProcessor(
        min_pixels=IMAGE * IMAGE, max_pixels=IMAGE * IMAGE, patch_size=8, merge_size=2, temporal_patch_size=2
    )
    p = processor_class(Qwen2VLProcessor)(image_processor=ip, tokenizer=t, chat_template=QWEN_TEMPLATE)
    ids = t.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=text_dims(
            len(t),
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            pad_token_id=t.pad_token_id,
            bos_token_id=None,
            eos_token_id=t.eos_token_id,
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            mlp_ratio=2,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=None,
        eos_token_id=t.eos_token_id,
        pad_token_id=t.pad_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config), p


GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


# A SigLIP-shaped vision tower for Gemma 3 and Idefics3: one layer, 8 px patches.
SIGLIP_DIMS = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE, patch_size=8
)


def gemma3():
    from transformers import AutoModelForImageTextToText, Gemma3Config, Gemma3ImageProcessor, Gemma3Processor

    t = tokenizer(
        [
            "<pad>",
            "<eos>",
            "<bos>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ],
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ip = Gemma3ImageProcessor(size={"height": IMAGE, "width": IMAGE})
    p = Gemma3Processor(image_processor=ip, tokenizer=t, chat_template=GEMMA_TEMPLATE, image_seq_length=4)
    ids = t.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=text_dims(
            len(t),
            head_dim=16,
            pad_token_id=t.pad_token_id,
            bos_token_id=t.bos_token_id,
            eos_token_id=ids("<end_of_turn>"),
            sliding_window=64,
        ),
        vision_config=dict(SIGLIP_DIMS),
        mm_tokens_per_image=4,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config), p


IDEFICS_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}<image>{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def idefics3():
    from transformers import AutoModelForImageTextToText, Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    t = tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"],
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    ip = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": IMAGE}, max_image_size={"longest_edge": IMAGE}
    )
    p = Idefics3Processor(image_processor=ip, tokenizer=t, image_seq_len=4, chat_template=IDEFICS_TEMPLATE)
    ids = t.convert_tokens_to_ids
    config = Idefics3Config(
        text_config=dict(
            model_type="llama",
            **text_dims(len(t), pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id),
        ),
        vision_config=dict(SIGLIP_DIMS),
        scale_factor=2,
        image_token_id=ids("<image>"),
    )
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config), p


def qwen2_5_vl():
    """Qwen2.5-VL: Qwen2-VL's processor and template, a windowed vision tower."""
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    from tunery.models.loading import processor_class

    _, base = qwen2_vl()
    t = base.tokenizer
    p = processor_class(Qwen2_5_VLProcessor)(
        image_processor=base.image_processor, tokenizer=t, chat_template=QWEN_TEMPLATE
    )
    ids = t.convert_tokens_to_ids
    rope = {"type": "mrope", "mrope_section": [2, 3, 3]}
    config = Qwen2_5_VLConfig(
        text_config=text_dims(len(t), rope_scaling=rope, pad_token_id=t.pad_token_id, eos_token_id=t.eos_token_id),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            out_hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=16,
            fullatt_block_indexes=[0],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config), p


BUILDERS = {"qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "gemma3": gemma3, "idefics3": idefics3}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
PROMPT = "what colour is this square"


def png(rgb: tuple[int, int, int]) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (IMAGE, IMAGE), rgb).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_part(rgb: tuple[int, int, int]) -> Part:
    return Part("inlineData", mime_type="image/png", data=png(rgb))


def shade(rgb: tuple[int, int, int], rng: random.Random, spread: int = 25) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-spread, spread))) for c in rgb)  # type: ignore[return-value]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_loss_mask_is_model_turns_and_end_of_turn(name: str) -> None:
    model, processor = BUILDERS[name]()
    family = families.require_family(model.config)
    example = Example(
        turns=(
            Turn("user", (image_part(COLOURS["red"]), Part("text", PROMPT))),
            Turn("model", (Part("text", "red"),)),
            Turn("user", (Part("text", "and this one"), image_part(COLOURS["blue"]))),
            Turn("model", (Part("text", "blue"),)),
        ),
        system="answer with one word",
        line=7,
    )
    short = Example(
        turns=(Turn("user", (image_part(COLOURS["green"]), Part("text", PROMPT))),)
        + (Turn("model", (Part("text", "green"),)),)
    )
    batch, _ = multimodal.process(family, processor, [example, short], None)  # padded: rows of unequal length
    tokenizer = processor.tokenizer
    placeholders = family.placeholder_ids(processor)
    assert placeholders, "the family names its media placeholder tokens"
    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    for row, answers in enumerate((["red", "blue"], ["green"])):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        trained = [k for k, label in enumerate(labels) if label != IGNORE_INDEX]
        assert all(labels[k] == ids[k] for k in trained)
        assert not placeholders & {ids[k] for k in trained}
        assert any(i in placeholders for i in ids), "the processor expanded the image placeholders"
        # Exactly the answers, each followed by its end-of-turn token, and nothing of the prompt.
        pieces, current = [], []
        for k in trained:
            current.append(ids[k])
            if ids[k] == end:
                pieces.append(current)
                current = []
        assert not current
        assert [tokenizer.decode(p[:-1]).strip() for p in pieces] == answers
        for piece, answer in zip(pieces, answers, strict=True):
            assert (
                piece[:-1] == tokenizer(answer, add_special_tokens=False)["input_ids"]
                or tokenizer.decode(piece[:-1]) == " " + answer
            )  # Idefics3 renders "Assistant: answer": the model writes the space
        # Every end-of-turn token after a model-turn opener is trained; the user turns' ones are not.
        assert sum(1 for k in trained if ids[k] == end) == len(answers) < ids.count(end)
    # The forward pass takes the processor's tensors: pixels reach the hidden states.
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = multimodal.body(model)(**inputs, use_cache=False).last_hidden_state
    assert hidden.shape[:2] == batch["input_ids"].shape


def test_unsupported_media_names_the_line_and_part() -> None:
    model, processor = qwen2_vl()
    family = families.require_family(model.config)
    audio = Example(
        turns=(
            Turn("user", (Part("text", PROMPT), Part("inlineData", mime_type="audio/wav", data="AAAA"))),
            Turn("model", (Part("text", "red"),)),
        ),
        line=3,
    )
    with pytest.raises(Exception, match=r"line 3: contents\[0\]\.parts\[1\]: Qwen2-VL models take text, image"):
        multimodal.process(family, processor, [audio], None)


def model_turn(label: str) -> dict:
    return {"role": "model", "parts": [{"text": label}]}


def write_rows(path: Path, items: list[tuple[str, tuple[int, int, int]]]) -> Path:
    rows = [
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": png(rgb)}}, {"text": PROMPT}],
                },
                model_turn(label),
            ]
        }
        for label, rgb in items
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@torch.no_grad()
def exact_match(model: torch.nn.Module, processor, items: list[tuple[str, tuple[int, int, int]]]) -> float:
    """Greedy answers to the same prompt on each image, compared whole with the label."""
    family = families.require_family(model.config)
    model.eval()
    right = 0
    for label, rgb in items:
        prompt = Example(turns=(Turn("user", (image_part(rgb), Part("text", PROMPT))),))
        messages = families.chat_messages(prompt, family)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(
            text=[text], images=[[families.decode_image(prompt.turns[0].parts[0], None)]], return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        right += answer.strip() == label
    return right / len(items)


TOWERS = ("model.visual.", "model.vision_tower.", "model.vision_model.")


@pytest.mark.parametrize(
    ("name", "method", "train_projector"),
    [
        ("qwen2_vl", "FULL", False),
        ("qwen2_vl", "PEFT_ADAPTER", False),
        ("qwen2_5_vl", "FULL", False),
        ("gemma3", "FULL", True),  # Gemma 3's projector starts at zero: frozen, it passes no pixels on
        ("idefics3", "FULL", True),
    ],
)
def test_tiny_vlm_learns_colours_from_pixels(name: str, method: str, train_projector: bool, tmp_path: Path) -> None:
    """Only the pixels carry the answer (one prompt for every example): tuned, held-out images are named."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from tunery.models.loading import load_processor
    from tunery.tuning import TuningSpec, tune

    model, processor = BUILDERS[name]()
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    rng = random.Random(0)
    train = [(label, shade(rgb, rng)) for _ in range(6) for label, rgb in COLOURS.items()]
    held_out = [(label, shade(rgb, rng)) for _ in range(3) for label, rgb in COLOURS.items()]
    rng.shuffle(train)
    before = exact_match(model, processor, held_out)
    validation = None
    if method != "FULL":  # a validation file elsewhere, its images as files beside it (fileData, relative)
        folder = tmp_path / "validation"
        folder.mkdir()
        rows = []
        for k, (label, rgb) in enumerate(held_out[:4]):
            (folder / f"{k}.png").write_bytes(base64.b64decode(png(rgb)))
            image = {"fileData": {"mimeType": "image/png", "fileUri": f"{k}.png"}}
            rows.append({"contents": [{"role": "user", "parts": [image, {"text": PROMPT}]}, model_turn(label)]})
        validation = folder / "validation.jsonl"
        validation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.perf_counter()
    spec = TuningSpec(
        validation=str(validation) if validation else None,
        train=str(write_rows(tmp_path / "train.jsonl", train)),
        base_model=str(base),
        method=method,
        epochs=40,
        batch_size=4,
        learning_rate_multiplier=100 if method == "FULL" else 10,
        adapter_size=8,
        train_projector=train_projector,
        output=str(tmp_path / "tuned"),
        device="cpu",
    )
    tuned = tune(spec)
    seconds = time.perf_counter() - started
    if method == "FULL":
        tuned_model = AutoModelForImageTextToText.from_pretrained(tuned)
    else:
        tuned_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), tuned)
    after = exact_match(tuned_model, load_processor(tuned), held_out)
    print(
        f"{name}: exact match {before:.0%} -> {after:.0%} on {len(held_out)} held-out images, tuned in {seconds:.1f} s"
    )
    assert before <= 0.5
    assert after >= 0.95
    family = families.require_family(model.config)
    if validation is not None:  # evaluated in the loop, media decoded from the validation file's folder
        records = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
        evaluated = [r for r in records if "eval_loss" in r]
        assert len(evaluated) == 41  # before the first step and at each epoch's end
        assert evaluated[-1]["eval_loss"] < evaluated[0]["eval_loss"]
        assert evaluated[0]["eval_token_accuracy"] <= 0.5 and evaluated[-1]["eval_token_accuracy"] >= 0.95
    if method != "FULL":  # adapters on the language model only: none in the vision tower or the projector
        keys = list(load_file(tuned / "adapter_model.safetensors"))
        assert any(".language_model." in k and "lora_A" in k for k in keys)
        assert not [k for k in keys if any(t in k for t in TOWERS)]
        return
    frozen = AutoModelForImageTextToText.from_pretrained(base).state_dict()
    changed = {k for k, v in tuned_model.state_dict().items() if not torch.equal(v, frozen[k])}
    projector = {k for k in frozen if k.startswith(tuple(p + "." for p in family.projector))}
    tower = {k for k in frozen if k.startswith(TOWERS)} - projector
    assert changed and not changed & tower, "the vision tower is frozen by default"
    assert bool(changed & projector) == train_projector, "the projector trains only with --train-projector"


def test_media_is_decoded_per_batch_not_kept() -> None:
    """``encode_all`` decodes each image once to count its tokens and keeps only ids; every batch decodes again."""
    import dataclasses

    model, processor = qwen2_vl()
    calls: list[str] = []

    def counting(part: Part, source: object, proc: object) -> object:
        calls.append(part.data[-12:])
        return families.decode_image(part, source, proc)

    family = dataclasses.replace(
        families.require_family(model.config), media={"image": families.MediaKind("image", "images", counting)}
    )
    examples = [
        Example(turns=(Turn("user", (image_part(rgb), Part("text", PROMPT))), Turn("model", (Part("text", label),))))
        for label, rgb in COLOURS.items()
    ]
    encoded = multimodal.encode_all(family, processor, examples, None, max_length=256)
    assert len(calls) == 4 and all(isinstance(e.input_ids, list) for e in encoded)
    assert not [v for e in encoded for v in vars(e).values() if isinstance(v, torch.Tensor)]
    collate = multimodal.MultimodalCollator(family, processor, None)
    batch = collate(encoded[:2])
    assert len(calls) == 6  # two more: this batch's images only
    assert batch["input_ids"][0].tolist()[: len(encoded[0].input_ids)] == encoded[0].input_ids
    assert batch["labels"][1].tolist()[: len(encoded[1].labels)] == encoded[1].labels
    with pytest.raises(Exception, match=r"over the maximum 8"):
        multimodal.encode_all(family, processor, examples[:1], None, max_length=8)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_lora_targets_the_language_model_and_opens_the_tower_on_request(name: str) -> None:
    model, _ = BUILDERS[name]()
    family = families.require_family(model.config)
    in_tower = lambda n: n.startswith(TOWERS) and not n.startswith(tuple(p + "." for p in family.projector))  # noqa: E731
    in_projector = lambda n: n.startswith(tuple(p + "." for p in family.projector))  # noqa: E731
    language = multimodal.lora_targets(model, family)
    assert language and all(".language_model." in n or ".text_model." in n for n in language)
    assert "lm_head" not in language
    with_vision = multimodal.lora_targets(model, family, train_vision=True)
    assert set(language) < set(with_vision) and any(in_tower(n) for n in with_vision)
    assert not any(in_projector(n) for n in with_vision)
    multimodal.freeze_media(model, family, train_projector=True)
    for n, p in model.named_parameters():
        assert p.requires_grad == (not in_tower(n)), n


def test_cli_tunes_a_vlm_dir_with_the_projector_open(tmp_path: Path) -> None:
    """``tunery tune`` on a vision-language model directory and a JSONL with image parts; LoRA with
    ``--train-projector`` keeps the projector whole in the adapter."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from tunery.cli import app

    model, processor = qwen2_vl()
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    rng = random.Random(1)
    train = write_rows(tmp_path / "train.jsonl", [(label, shade(rgb, rng)) for label, rgb in COLOURS.items()])
    output = tmp_path / "tuned"
    args = ["tune", "--model", str(base), "--train", str(train), "--output", str(output), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "2", "--device", "cpu", "--train-projector"])
    assert result.exit_code == 0, result.output
    keys = list(load_file(output / "adapter_model.safetensors"))
    assert any("visual.merger" in k and "lora" not in k for k in keys), "the projector, whole"
    assert any(".language_model." in k and "lora_A" in k for k in keys)
    assert not [k for k in keys if "visual.blocks" in k], "the vision tower stays frozen"
    manifest = json.loads((output / "tunery.json").read_text())
    assert manifest["spec"]["train_projector"] is True
    assert (output / "processor_config.json").is_file()
