"""What both tuning methods do before and after the loop: data, run directory, optimizer, output files."""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tunery.data.media import MediaError, MediaSource
from tunery.data.stats import preference_data_stats, tuning_data_stats
from tunery.data.tokenize import Encoded
from tunery.data.validation import read_examples
from tunery.errors import ConfigError, JobError
from tunery.evaluation.tasks import closed_label_set, training_labels, training_schema
from tunery.evaluation.tuned import evaluate_tuned
from tunery.models.loading import is_multimodal, load_processor, load_tokenizer
from tunery.models.multimodal import Family, require_family
from tunery.models.sources import BaseModel
from tunery.models.tuned import MANIFEST_FILE, METRICS_FILE
from tunery.settings import data_root, tuned_models_dir
from tunery.tuning import checkpoint as checkpoints
from tunery.tuning import defaults, multimodal, split
from tunery.tuning.checkpoint import latest_checkpoint, load_checkpoint, write_atomic
from tunery.tuning.distributed import Processes
from tunery.tuning.lineage import Start, resolve_start
from tunery.tuning.loop import Hooks, Run, TrainState, stop_point
from tunery.tuning.methods import objective_of
from tunery.tuning.packing import Batcher
from tunery.tuning.precision import resolve_precision
from tunery.tuning.spec import TuningSpec

RUN_FILE = "run.json"
HELD_OUT_FILE = "validation-split.jsonl"
"""The training lines a run held out to validate on (``tunery.tuning.split``), in the tuned model directory."""


@dataclass
class Prepared:
    """A run's resolved inputs: base model, tokenizer, encoded data, resolved hyperparameters."""

    spec: TuningSpec
    base: BaseModel
    tokenizer: Any
    train: list[Encoded]
    validation: list[Encoded]
    epochs: int
    learning_rate: float
    run_dir: Path
    stats: dict[str, Any]
    processor: Any = None  # a vision-language model's processor (its tokenizer is ``tokenizer``)
    family: Family | None = None  # the model's multimodal family (tunery.models.multimodal)
    media_source: Any = None  # where the training file's media parts resolve
    validation_media_source: Any = None  # and the validation file's
    start: Start | None = None  # a tuned model the run starts from: its adapter to continue, its chain (lineage.py)
    settings: defaults.Settings | None = None  # epochs, adapter size, learning rate multiplier, and why
    shape: defaults.DataShape | None = None  # the training data's shape the settings were chosen from
    validation_note: str = ""  # where the validation examples come from (a file, a held-out slice, none)
    validation_path: str | None = None  # the validation JSONL: the spec's, or the held-out slice's file

    @property
    def adapter_size(self) -> int:
        return self.settings.adapter_size if self.settings else defaults.ADAPTER_SIZE


def new_run_dir(spec: TuningSpec) -> Path:
    """The output directory of a new run; refuses one that already holds files."""
    if spec.output:
        path = Path(spec.output).expanduser().resolve()
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = tuned_models_dir() / f"{stamp}-{secrets.token_hex(3)}"
    if path.exists() and any(path.iterdir()):
        raise JobError(
            f"{path} already exists and is not empty; pass --resume to continue its run, or choose another --output"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def saved_spec(run_dir: str | Path) -> TuningSpec:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise JobError(f"{run_dir} holds no tuning run to resume ({RUN_FILE} is missing)")
    return TuningSpec.from_dict(json.loads(path.read_text())["spec"])


def prepare(spec: TuningSpec, run_dir: Path) -> Prepared:
    """Resolve the base model and read both datasets; raises DatasetError listing every problem."""
    start = resolve_start(spec.base_model)  # a base model, or a tuned model to tune further
    base = start.base
    processor = load_processor(base.path) if is_multimodal(base.path) else None
    tokenizer = processor.tokenizer if processor is not None else load_tokenizer(base.path)
    max_length = min(spec.max_length, base.context_length)
    model_id = base.id if base.id == spec.base_model else spec.base_model
    options = {"tokenizer": tokenizer, "max_length": max_length, "model_id": model_id, "modalities": base.modalities}
    options["objective"] = spec.objective
    if processor is not None and spec.objective != "SFT":
        raise ConfigError(f"{spec.objective} tunes text-only models; {model_id} is a vision-language model")
    if processor is not None:
        options["tokenizer"] = None  # the processor encodes (media tokens included), below
    train = read_examples(spec.train, media_source=media_source(spec, spec.train), **options)
    validation = (
        read_examples(spec.validation, media_source=media_source(spec, spec.validation), **options)
        if spec.validation
        else None
    )
    for report in (train, validation):
        if report is not None:
            report.raise_for_errors()
    pairs = spec.objective != "SFT"  # preference pairs (tokenize.EncodedPair), else examples
    train_encoded = train.encoded_pairs if pairs else train.encoded
    validation_encoded = (validation.encoded_pairs if pairs else validation.encoded) if validation else []
    family, source, validation_source = None, None, None
    if processor is not None:
        config = json.loads((Path(base.path) / "config.json").read_text())
        family = require_family(config, model_id)
        source = media_source(spec, spec.train)
        train_encoded = [*multimodal.encode_all(family, processor, train.examples, source, max_length, spec.train)]
        if validation is not None and spec.validation:
            validation_source = media_source(spec, spec.validation)
            validation_encoded = [
                *multimodal.encode_all(
                    family, processor, validation.examples, validation_source, max_length, spec.validation
                )
            ]
    read = train.pairs if pairs else train.examples
    planned = plan(spec, read, train_encoded, media=processor is not None)
    validation_path, settings, shape = spec.validation, planned.settings, planned.shape
    if planned.held_out:
        train_encoded, validation_encoded, validation_path = hold_out(
            spec.train, read, train_encoded, planned.held_out, run_dir
        )
    note = planned.note
    epochs = settings.epochs
    learning_rate = base.learning_rates[spec.method] * settings.learning_rate_multiplier
    stats = (preference_data_stats if pairs else tuning_data_stats)(train_encoded, epochs, spec.batch_size)
    prepared = Prepared(
        spec,
        base,
        tokenizer,
        train_encoded,
        validation_encoded,
        epochs,
        learning_rate,
        run_dir,
        stats,
        processor,
        family,
        source,
        validation_source,
        start,
        settings,
        shape,
        note,
        validation_path,
    )
    return prepared


@dataclass(frozen=True)
class Plan:
    """What a run makes of its training data before it trains: the slice it holds out, and its settings."""

    held_out: tuple[int, ...]
    note: str
    shape: defaults.DataShape
    settings: defaults.Settings

    def describe(self) -> list[str]:
        return [*self.settings.describe(), self.note]


def plan(spec: TuningSpec, examples: list[Any], encoded: list[Encoded], media: bool = False) -> Plan:
    """The validation split (``tunery.tuning.split``) and the settings (``tunery.tuning.defaults``) of a run on
    ``examples`` (read and encoded from ``spec.train``); ``media``: a vision-language model's run (never split)."""
    pairs = spec.objective != "SFT"  # a preference pair's answer, for its shape, is the chosen one
    answers = [e.chosen if pairs else e.target for e in examples]
    closed = not pairs and bool(closed_label_set(answers))
    chosen: tuple[int, ...] = ()
    if spec.validation:
        note = f"validation: {Path(spec.validation).name}"
    elif media:
        note = "no validation: a vision-language run is split only by a validation file"
    elif not spec.auto_validation:
        note = "no validation: the automatic split is turned off and no validation file was given"
    else:
        found = split.held_out(answers, closed, spec.seed)
        chosen, note = found.held_out, found.note
    held = set(chosen)
    kept = [i for i in range(len(encoded)) if i not in held]
    shape = defaults.DataShape.of([answers[i] for i in kept], [encoded[i].trained_tokens for i in kept], closed)
    settings = defaults.resolve(
        shape, spec.epochs, spec.adapter_size, spec.learning_rate_multiplier, "DPO" if pairs else "SFT"
    )
    return Plan(chosen, note, shape, settings)


def hold_out(
    train_path: str, examples: list[Any], encoded: list[Encoded], chosen: tuple[int, ...], run_dir: Path
) -> tuple[list[Encoded], list[Encoded], str]:
    """Training and validation examples once ``chosen`` are held out; their lines go to ``HELD_OUT_FILE``."""
    held = set(chosen)
    lines = Path(train_path).read_text(encoding="utf-8").splitlines()
    path = run_dir / HELD_OUT_FILE
    write_atomic(path, "".join(lines[examples[i].line - 1] + "\n" for i in chosen))
    kept = [i for i in range(len(encoded)) if i not in held]
    return [encoded[i] for i in kept], [encoded[i] for i in chosen], str(path)


def held_out(prep: Prepared) -> bool:
    """Whether the run validates on a slice it held out of its training data."""
    return bool(prep.validation_path) and not prep.spec.validation


def by_answers(prep: Prepared) -> bool:
    """Whether the best checkpoint is chosen by exact answers: a closed label set or JSON answers (not free text)."""
    return bool(prep.shape and (prep.shape.closed or prep.shape.json_answers))


def media_source(spec: TuningSpec, dataset: str) -> MediaSource:
    """Where a dataset's media parts resolve: paths against its folder or under ``TUNERY_DATA_ROOT`` (as the
    server checked an upload's), ``files/{id}`` in the job's ``uploaded_media`` (a server job's pinned uploads;
    an id is a name there, never a path)."""
    folder = spec.uploaded_media

    def uploaded(file_id: str) -> Path:
        if folder is None or not file_id or "/" in file_id or file_id.startswith("."):
            raise MediaError(f"uploaded file not found: files/{file_id[:40]} (ids are known to the server's jobs)")
        return Path(folder) / file_id

    return MediaSource(
        base=Path(dataset).expanduser().resolve().parent,
        root=data_root(),
        resolve_file=uploaded,
        allow_remote=spec.allow_remote_media,
    )


def make_run(prep: Prepared, model: Any, core: Any, placement: Any = None, processes: Any = None) -> Run:
    """Optimizer (AdamW), a linear schedule with warm-up, and the loop's inputs (on ``placement``'s device,
    ``processes`` sharing each step: ``tunery.tuning.devices``, ``tunery.tuning.distributed``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=prep.learning_rate, weight_decay=0.0)
    total = max(1, -(-len(prep.train) // prep.spec.batch_size) * prep.epochs)
    warmup = max(1, round(0.05 * total))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    objective = objective_of(prep.spec)
    device = placement.device if placement else None
    text_batcher = Batcher(prep.tokenizer.pad_token_id, placement.device, placement.packing) if placement else None
    own = objective.batcher(prep.tokenizer.pad_token_id, device)  # a pair batch: chosen and rejected rows
    media = eval_media = None
    if prep.processor is not None and prep.family is not None:  # media decoded per batch, on the run's device
        media = multimodal.MultimodalCollator(prep.family, prep.processor, prep.media_source, device)
        eval_source = prep.validation_media_source or prep.media_source
        eval_media = multimodal.MultimodalCollator(prep.family, prep.processor, eval_source, device)
    return Run(
        model=model,
        core=core,
        optimizer=optimizer,
        scheduler=scheduler,
        train=prep.train,
        validation=prep.validation,
        epochs=prep.epochs,
        batch_size=prep.spec.batch_size,
        micro_batch_tokens=prep.spec.micro_batch_tokens,
        precision=placement.precision if placement else resolve_precision(prep.spec.precision),
        checkpoint_seconds=prep.spec.checkpoint_seconds,
        seed=prep.spec.seed,
        pad_id=prep.tokenizer.pad_token_id,
        run_dir=prep.run_dir,
        batcher=own or media or text_batcher,
        processes=processes or Processes(),
        eval_batcher=own or eval_media,
        objective=objective,
        on_epoch=epoch_keeper(prep, model),
    )


def epoch_keeper(prep: Prepared, model: Any) -> Any:
    """What the loop calls at each epoch's end: keep its checkpoint if it is one of ``kept_epochs``."""
    kept = checkpoints.kept_epochs(prep.epochs)

    def keep(state: TrainState, metrics: dict[str, Any]) -> None:
        if state.epoch in kept:
            checkpoints.save_epoch_checkpoint(prep.run_dir, model, state.step, state.epoch, metrics)

    return keep


def start_or_resume(prep: Prepared, run: Run, resume: bool) -> None:
    """Record the run (new) or restore its newest checkpoint (resume), keeping metrics.jsonl in step; first, what the
    objective fixes at step 0 (DPO's reference log-probabilities: computed now, or read back on resume)."""
    run.objective.start(run)
    metrics = prep.run_dir / METRICS_FILE
    if not run.processes.is_main:  # process 0 records the run; the others only load its checkpoint
        checkpoint = latest_checkpoint(prep.run_dir) if resume else None
        if checkpoint is not None:
            run.state = TrainState(**load_checkpoint(checkpoint, run.model, run.optimizer, run.scheduler))
        return
    if not resume:
        record = {"spec": prep.spec.to_dict(), "epochs": prep.epochs, "learningRate": prep.learning_rate}
        write_atomic(prep.run_dir / RUN_FILE, json.dumps(record, indent=2))
        metrics.write_text("")
        return
    checkpoint = latest_checkpoint(prep.run_dir)
    if checkpoint is None:
        metrics.write_text("")  # killed before its first checkpoint: start over
        return
    saved = load_checkpoint(checkpoint, run.model, run.optimizer, run.scheduler)
    run.state = TrainState(**saved)
    if metrics.is_file():
        kept = [
            line for line in metrics.read_text().splitlines() if line and json.loads(line)["step"] <= run.state.step
        ]
        write_atomic(metrics, "".join(line + "\n" for line in kept))


def logging_hooks(hooks: Hooks, run_dir: Path) -> Hooks:
    """``hooks`` that also append every metrics record to ``metrics.jsonl``."""
    path = run_dir / METRICS_FILE

    def on_metrics(record: dict[str, Any]) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        hooks.on_metrics(record)

    return Hooks(on_metrics=on_metrics, should_stop=hooks.should_stop, on_phase=hooks.on_phase)


def run_hooks(hooks: Hooks | None, run_dir: Path, processes: Processes) -> Hooks:
    """Process 0 logs (``logging_hooks``) and shares its stop requests at each step's sync; the others are quiet."""
    if not processes.is_main:
        return Hooks()
    hooks = logging_hooks(hooks or Hooks(), run_dir)
    processes.local_stop = hooks.should_stop
    return hooks


DATA_STATS = {"SFT": "supervisedTuningDataStats", "DPO": "preferenceOptimizationDataStats"}
"""The ``tuningDataStats`` key of each objective's statistics (Vertex's names)."""


def finish(prep: Prepared, run: Run) -> Path:
    """Write tokenizer, chat template and ``tunery.json``; then, with a validation file, the final evaluation
    (``evaluation.json`` + ``predictions.jsonl``) of the finished model; drop checkpoints last, so a run stopped
    during the save or the evaluation (``stop_point``) resumes from its last checkpoint."""
    run.hooks.on_phase("save")
    pairs = prep.spec.objective != "SFT"
    (prep.processor or prep.tokenizer).save_pretrained(prep.run_dir)
    kept = checkpoints.epoch_checkpoints(prep.run_dir)
    chosen = checkpoints.best_checkpoint(kept, by_answers=by_answers(prep))
    if chosen is not None and chosen[0] is not kept[-1]:
        checkpoints.adopt_weights(chosen[0]["path"], prep.run_dir)
    final = {}
    for line in (prep.run_dir / METRICS_FILE).read_text().splitlines():
        final.update({k: v for k, v in json.loads(line).items() if k not in ("learning_rate", "eta_seconds")})
    adapter_size = prep.adapter_size
    if prep.spec.is_lora and hasattr(run.model, "peft_config"):  # a continued adapter keeps its own rank
        adapter_size = run.model.peft_config["default"].r
    labels = training_labels(prep.spec.train)
    manifest = {
        "format": 1,
        "id": prep.run_dir.name,
        "displayName": prep.spec.display_name or prep.run_dir.name,
        "tuningMode": prep.spec.method,
        "objective": prep.spec.objective,
        "baseModel": {
            "id": prep.base.id,
            "path": str(prep.base.path),
            "sha256": prep.base.sha256,
            **({"revision": prep.base.revision, "files": prep.base.files} if prep.base.revision else {}),
        },
        **({"tunedFrom": prep.start.chain} if prep.start and prep.start.chain else {}),
        "spec": prep.spec.to_dict(),
        "hyperParameters": {
            "epochCount": prep.epochs,
            "learningRate": prep.learning_rate,
            "learningRateMultiplier": prep.settings.learning_rate_multiplier if prep.settings else None,
            "adapterSize": adapter_size if prep.spec.is_lora else None,
            "batchSize": prep.spec.batch_size,
            "maxLength": prep.spec.max_length,
            "seed": prep.spec.seed,
            "precision": run.precision,
            **({"beta": prep.spec.beta, "preferenceLoss": prep.spec.preference_loss} if pairs else {}),
        },
        "defaults": {
            **(prep.settings.to_dict() if prep.settings else {}),
            "dataShape": prep.shape.to_dict() if prep.shape else None,
        },
        "validation": {"note": prep.validation_note, "heldOutFile": HELD_OUT_FILE if held_out(prep) else None},
        "checkpoints": [{k: c[k] for k in ("name", "step", "epoch", "metrics")} for c in kept],
        "bestCheckpoint": (
            {"name": chosen[0]["name"], "step": chosen[0]["step"], "epoch": chosen[0]["epoch"], "why": chosen[1]}
            if chosen
            else None
        ),
        "tuningDataStats": {DATA_STATS[prep.spec.objective]: prep.stats},
        "labels": labels,  # a classification file's label set, else null
        "answerSchema": None if labels or pairs else training_schema(prep.spec.train),  # JSON answers' closed schema
        "finalMetrics": final,
        "trainingSeconds": round(run.state.seconds, 2),
        "createTime": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_atomic(prep.run_dir / MANIFEST_FILE, json.dumps(manifest, indent=2))
    checkpoints.finish_epoch_checkpoints(prep.run_dir, manifest)
    stop_point(run, "during the save")
    if prep.validation_path and not pairs:  # a preference run's validation is its eval_rewards, in the loop
        run.hooks.on_phase("evaluation")
        evaluate_tuned(
            prep.run_dir, prep.validation_path, prep.spec.train, stop=lambda: stop_point(run, "during the evaluation")
        )
    shutil.rmtree(prep.run_dir / "checkpoints", ignore_errors=True)
    (prep.run_dir / RUN_FILE).unlink(missing_ok=True)
    return prep.run_dir
