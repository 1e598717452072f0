"""``tunery serve``: the tuning service over HTTP (see ``tunery.api``)."""

from __future__ import annotations

import typer

from tunery.cli._common import handle_errors


@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; a non-loopback one needs an API key first."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port; 0 picks a free one (the printed URL names it)."),
    workers: int = typer.Option(1, min=1, max=64, help="Tuning jobs run at once, each in its own worker process."),
    engine: str = typer.Option("transformers", help="Model host: transformers (tunery's own) or vllm (CUDA)."),
    vllm_base: str = typer.Option(None, "--vllm-base", help="--engine vllm: the base model (HF directory or id)."),
    max_lora_rank: int = typer.Option(16, "--max-lora-rank", help="--engine vllm: the largest adapter rank served."),
    max_loras: int = typer.Option(4, "--max-loras", help="--engine vllm: adapters in one batch at once."),
    executor: str = typer.Option(
        "local", "--executor", help="Where job workers run: local (processes here) or ray (RAY_ADDRESS's cluster)."
    ),
) -> None:
    """Serve the REST API (tuning jobs, files, models, generateContent) until Ctrl-C or SIGTERM."""
    from tunery.api.server import serve as run
    from tunery.errors import ConfigError

    if engine not in ("transformers", "vllm"):
        raise ConfigError(f"--engine {engine!r}: expected transformers or vllm")
    vllm = None
    if engine == "vllm":
        if not vllm_base:
            raise ConfigError("--engine vllm needs --vllm-base MODEL: the base model its adapters were tuned from")
        vllm = {"base": vllm_base, "max_lora_rank": max_lora_rank, "max_loras": max_loras}
    from tunery.jobs.scheduler import make_executor

    run(host=host, port=port, workers=workers, vllm=vllm, executor=make_executor(executor))
