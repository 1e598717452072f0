"""Shared fixtures: an isolated ``$TUNERY_HOME`` and tiny offline Hugging Face models.

The unit tier never touches the network, ``~/.tunery`` or the shipped GGUF models. A "tiny model"
is a local Hugging Face directory (what ``tunery.models.resolve_base`` accepts as a base model):
a byte-level BPE tokenizer trained in memory on the fixture texts, and a 2-layer, hidden-64 Llama
built from its config with a fixed seed. One directory is written per chat template in
``tunery.models.templates.TEMPLATES``; they share the tokenizer vocabulary and the weights.

    .venv/bin/python -m pytest tests/unit -x -q
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Before transformers / huggingface_hub are imported anywhere: no network, no progress bars.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# served answers are compared with in-process (fp32) ones; the faster weights have tests of their own
os.environ.setdefault("TUNERY_SERVING_WEIGHTS", "fp32")
# One thread: the tiny models gain nothing from more, two OpenMP threads on a busy 2-core machine
# run 10-50x slower, and a subprocess must compute exactly what this process does (resume tests).
os.environ["OMP_NUM_THREADS"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).resolve().parent / "data"

# The suite runs on two workers (pyproject: -n 2 --dist loadfile), each file on one of them, handed out in
# collection order as a worker frees up. The longest files go first, so that the run does not end on one worker
# still in a long file while the other idles. Seconds each took in one run on 2 cores (AMD EPYC, AVX2 only).
LONGEST_FIRST = [
    "tests/integration/test_real_models.py",  # 301 s
    "tests/service/test_faults.py",  # 200 s
    "tests/unit/test_distributed.py",  # 187 s
    "tests/integration/test_report.py",  # 183 s (before its perturbation pass was dropped)
    "tests/unit/test_scheduler.py",  # 135 s
    "tests/browser/test_console.py",  # 128 s
    "tests/service/test_remote_sdk.py",  # 95 s
    "tests/unit/test_cli_sdk.py",  # 89 s
    "tests/service/test_api.py",  # 79 s
    "tests/integration/test_ray.py",  # 79 s
    "tests/service/test_openapi_fuzz.py",  # 78 s
    "tests/service/test_postgres.py",  # 69 s
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
VOCAB_SIZE = 500
WORDS = (
    "system user assistant model route the ticket answer briefly you are a helpful AI assistant named SmolLM "
    "trained by Hugging Face card arrival declined transfer failed payment money bank account hello world "
    "yes no one two three four five six seven eight nine ten red green blue yellow what where when why how "
    "please thanks good morning evening night today tomorrow monday tuesday wednesday"
)


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def tunery_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session gets its own ``$TUNERY_HOME``; nothing reads or writes ``~/.tunery``."""
    home = tmp_path_factory.mktemp("tunery-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNERY_HOME", str(home))
        yield home


@pytest.fixture(scope="session", autouse=True)
def _embedded_workers_end() -> Iterator[None]:
    """Embedded SDK workers outlive the call that started them by design; the session waits for them."""
    yield
    import subprocess

    from tunery.jobs import local

    for process in local._workers.values():
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


FIXTURES = ("classify_gemini.jsonl", "classify_openai.jsonl", "multiturn.jsonl")


def fixture_texts() -> list[str]:
    """Every text in the JSONL fixtures, so the tokenizer has merges for them. A fixed list of files:
    a new file in tests/data must not change the tokenizer (and so the tiny model) under other tests."""
    texts = []
    for path in (DATA_DIR / name for name in FIXTURES):
        for line in path.read_text().splitlines():
            texts += [s for s in _strings(json.loads(line)) if s]
    return texts


def _strings(obj: object) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def build_tokenizer():
    """A byte-level BPE tokenizer (vocabulary ~500) with the special tokens of every catalog template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = fixture_texts() + WORDS.split() + [WORDS]
    tok.train_from_iterator(corpus * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build_model(tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``factory(template_name)`` → a tiny local model directory whose tokenizer carries that template."""
    from tunery.models.templates import TEMPLATES

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}
    parts: dict[str, object] = {}

    def factory(template: str = "chatml") -> Path:
        if template not in TEMPLATES:
            raise KeyError(f"unknown template {template!r}; expected one of {sorted(TEMPLATES)}")
        if template not in built:
            if not parts:
                parts["tokenizer"] = build_tokenizer()
                parts["model"] = build_model(parts["tokenizer"])
            tokenizer, model = parts["tokenizer"], parts["model"]
            path = root / template
            tokenizer.chat_template = TEMPLATES[template]  # type: ignore[attr-defined]
            tokenizer.save_pretrained(path)  # type: ignore[attr-defined]
            model.save_pretrained(path, safe_serialization=True)  # type: ignore[attr-defined]
            built[template] = path
        return built[template]

    return factory


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory: Callable[[str], Path]) -> Path:
    """The tiny model with the ChatML template (what a local directory without a template gets)."""
    return tiny_model_factory("chatml")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_factory: Callable[[str], Path]) -> Callable[[str], object]:
    """``tokenizer(template_name)``: the tiny model's tokenizer, loaded the way tunery loads it."""
    from tunery.models.loading import load_tokenizer

    cache: dict[str, object] = {}

    def get(template: str = "chatml") -> object:
        if template not in cache:
            cache[template] = load_tokenizer(tiny_model_factory(template))
        return cache[template]

    return get


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def classification_rows(n: int, words: int = 0) -> list[dict]:
    """``n`` Gemini-form classification examples, cycling the 10-row fixture with each user text
    numbered apart; ``words`` pads each user text to lengthen it."""
    lines = (DATA_DIR / "classify_gemini.jsonl").read_text().splitlines()
    rows = []
    for i in range(n):
        row = json.loads(lines[i % len(lines)])
        if words:
            row["contents"][0]["parts"][0]["text"] += " " + " ".join(WORDS.split()[:words])
        row["contents"][0]["parts"][0]["text"] += f" #{i}"
        rows.append(row)
    return rows


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def make_train(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_train(n, words=0)`` → a JSONL of ``n`` classification examples (see ``classification_rows``)."""
    root = tmp_path_factory.mktemp("train-data")

    def make(n: int, words: int = 0) -> Path:
        path = root / f"train-{n}-{words}.jsonl"
        return path if path.exists() else write_jsonl(path, classification_rows(n, words))

    return make


@pytest.fixture(scope="session")
def classify_train(make_train: Callable[..., Path]) -> Path:
    """20 Gemini-form classification examples (the 10-row fixture twice, numbered apart)."""
    return make_train(20)


def _tune_fixture(tmp_path_factory, base: Path, train: Path, method: str) -> Path:
    from tunery.tuning import TuningSpec, tune

    spec = TuningSpec(
        train=str(train),
        validation=str(DATA_DIR / "classify_openai.jsonl"),
        base_model=str(base),
        method=method,
        epochs=4,
        batch_size=4,
        learning_rate_multiplier=20 if method == "PEFT_ADAPTER" else 50,
        output=str(tmp_path_factory.mktemp(f"tuned-{method.lower()}") / "model"),
        display_name=f"tiny {method}",
    )
    return tune(spec)


@pytest.fixture(scope="session")
def tuned_lora(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, classify_train: Path) -> Path:
    """A LoRA tuned model directory: the tiny ChatML model taught the classification fixture."""
    return _tune_fixture(tmp_path_factory, tiny_model, classify_train, "PEFT_ADAPTER")


@pytest.fixture(scope="session")
def tuned_full(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, classify_train: Path) -> Path:
    """A fully tuned model directory, same data as ``tuned_lora``."""
    return _tune_fixture(tmp_path_factory, tiny_model, classify_train, "FULL")


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a Unix socket (Debian's ``postgresql`` binaries); yields a URL
    prefix ``postgresql://tunery@/`` + ``?host=...`` pieces via ``postgres_url``. Skips without PostgreSQL."""
    import shutil
    import subprocess
    import tempfile
    import time

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="tunery-pg-"))  # not under pytest's 0700 root-only tmp
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")  # sbin: off some PATHs
        if runuser is None:
            pytest.fail("running as root, the PostgreSQL tests need util-linux's runuser to start it as 'postgres'")
        as_user = [runuser, "-u", "postgres", "--"]
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "tunery", "--auth=trust", "-E", "UTF8")
    command = [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-k", str(sockets)]
    command += ["-c", "listen_addresses=", "-c", "fsync=off", "-p", "5432"]
    servers: list[subprocess.Popen] = []

    def start() -> None:
        servers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not (sockets / ".s.PGSQL.5432").exists():
            if time.monotonic() > deadline or servers[-1].poll() is not None:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)

    def stop() -> None:
        """A fast shutdown (SIGINT to the postmaster): every client's connection is closed at once."""
        os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
        servers[-1].wait(30)

    try:
        start()
        POSTGRES_CONTROL[str(sockets)] = (stop, start)
        yield str(sockets)
    finally:
        POSTGRES_CONTROL.pop(str(sockets), None)
        if servers[-1].poll() is None:
            servers[-1].terminate()
            servers[-1].wait(30)
        shutil.rmtree(root, ignore_errors=True)


POSTGRES_CONTROL: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}


@pytest.fixture
def postgres_control(postgres_server: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(stop, start)`` of the session's PostgreSQL cluster, to take it away and bring it back mid-test."""
    return POSTGRES_CONTROL[postgres_server]


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new, empty PostgreSQL database for one test, as a ``TUNERY_DATABASE_URL``."""
    import secrets

    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(f"host={postgres_server} dbname=postgres user=tunery", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://tunery@/{name}?host={postgres_server}"
