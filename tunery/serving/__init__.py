"""Inference: the engine (torch), the wire formats (Gemini's shapes in gemini.py, OpenAI's in openai.py) and the model
host client (torch-free)."""

from tunery._lazy import exports

__all__ = [
    "Engine",
    "Generation",
    "GenerationConfig",
    "GenerationHost",
    "ModelHost",
    "count_tokens_response",
    "generate_response",
    "generation_config",
    "parse_count_tokens_request",
    "parse_generate_request",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "Engine": "tunery.serving.engine",
        **dict.fromkeys(["GenerationHost", "ModelHost"], "tunery.serving.process"),
        **dict.fromkeys(
            [
                "Generation",
                "GenerationConfig",
                "count_tokens_response",
                "generate_response",
                "generation_config",
                "parse_count_tokens_request",
                "parse_generate_request",
            ],
            "tunery.serving.gemini",
        ),
    },
)
