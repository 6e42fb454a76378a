"""The supervised fine-tuning recipe: ``tune(config) -> TuneResult``, split by stage.

setup (model card, tokenizer, validated data, hyperparameters, the model with LoRA or DoRA adapters or every
weight trainable) → fit (epochs of length-grouped batches, a scored checkpoint per epoch, early stopping) →
keep the best epoch's checkpoint → validate (base vs fine-tuned loss) → save (the adapter or the full
weights, and their metadata, atomically). Progress leaves as event dicts, written to the run's ``events.jsonl`` and
handed to ``on_event``; this module prints nothing and knows nothing about HTTP or databases.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from tempering.catalog import get_card, load_causal_lm, load_tokenizer, resolve_weights
from tempering.data import EncodedExample, encode_chat
from tempering.errors import InvalidConfigError, InvalidDataError
from tempering.fileio import sha256_file
from tempering.hardware import select_placement
from tempering.store import objects
from tempering.train import artifacts, attention, fastlora, weights
from tempering.train.batching import collate
from tempering.train.checkpoint import COMPLETE, CheckpointError, discard_partial, latest_checkpoint
from tempering.train.classify import (
    choose_class_weights,
    choose_head_init,
    classification_loss,
    classification_metrics,
    collate_classes,
    encode_texts,
    init_head_from_labels,
    input_format_for,
    load_classifier,
    predict,
    texts_and_labels,
)
from tempering.train.config import (
    ResolvedHyperparameters,
    TuneConfig,
    check_continuation,
    resolve_hyperparameters,
)
from tempering.train.distributed import World, current_world
from tempering.train.fit import RunCancelled, fit
from tempering.train.jobdata import class_count, load_job_data
from tempering.train.loss import evaluate, sparse_lm_loss

EventSink = Callable[[dict], None]


class TuneResult(BaseModel):
    model_id: str
    base_model: str
    output_dir: str
    run_dir: str
    trained_tokens: int
    seconds: float
    train_loss: float | None
    valid_loss: float | None
    valid_mean_token_accuracy: float | None
    base_valid_loss: float | None
    base_valid_mean_token_accuracy: float | None
    n_train_examples: int
    n_valid_examples: int
    hyperparameters: ResolvedHyperparameters
    task: str = "chat"
    classification: dict | None = None  # accuracy, macro-F1, per-class F1, top confusions on validation
    evaluation: dict | None = None  # the verdict of evaluation.json (tempering.evaluate), when evaluated
    selection: dict | None = None  # the kept epoch's checkpoint and why (train.selection); None: no validation


@dataclass
class Setup:
    config: TuneConfig
    base_model: str
    parent: str | None  # the fine-tuned model this run continues, if any
    tokenizer: object
    model: object  # a PeftModel (adapter lora or dora), or the model itself (adapter full)
    train: list[EncodedExample]
    valid: list[EncodedExample]
    hp: ResolvedHyperparameters
    max_length: int
    short_id: str
    folder: Path
    log: artifacts.RunLog
    on_event: EventSink | None
    data_sha256: dict
    world: World
    task: str = "chat"
    make_batch: Callable = None  # examples -> batch dict
    loss_fn: Callable = None  # (model, batch) -> LossResult
    id2label: dict[int, str] | None = None  # classification only
    train_loss_fn: Callable = None  # loss_fn with the job's label smoothing; loss_fn scores validation
    selection: dict | None = None  # which epoch's checkpoint was kept, and why (train.selection)
    head: dict | None = None  # classification: how the head was initialised, and why (head_init)
    input_format: str | None = None  # classification: how texts are read (train.classify.encode_inputs)
    class_weights: dict | None = None  # classification: the training loss's weight per label, and why

    def write_run(self, **fields) -> None:
        """Create or update ``run.json``: what resume needs to find and rebuild this run."""
        if not self.world.is_main:
            return
        run = artifacts.read_run(self.folder) or {
            "id": self.short_id, "config": self.config.model_dump(mode="json"), "base_model": self.base_model,
            "parent_model": self.parent, "hyperparameters": self.hp.model_dump(), "data_sha256": self.data_sha256,
        }
        artifacts.write_json_atomic(self.folder / artifacts.RUN_FILE, {**run, **fields})
        objects.publish(self.folder / artifacts.RUN_FILE)

    def emit(self, message: str, *, type: str = "message", level: str = "info", **data) -> None:
        if not self.world.is_main:
            return
        event = {"created_at": int(time.time()), "level": level, "type": type, "message": message, "data": data}
        self.log.event(event)
        if self.on_event is not None:
            self.on_event(event)


def _check_targets(model, targets) -> None:
    """Named LoRA targets must be linear layers of this model; architectures name them differently (a Llama's
    ``q_proj``/``v_proj`` and ``up_proj`` are fused into ``qkv_proj`` and ``gate_up_proj`` in a Phi-3)."""
    if targets == "all-linear":
        return
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        have = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise InvalidConfigError(
            f"LoRA target module(s) {', '.join(missing)} are not linear layers of this "
            f"{model.config.model_type} model; its linear layers are: {', '.join(have)} (or use all-linear)",
            param="lora.target_modules")


def _continue_from(model, config: TuneConfig, parent_folder: Path):
    """Continue training a fine-tuned parent: the same kind of model as the parent, trainable."""
    import json

    parent = ("full" if weights.is_full(parent_folder) else "dora" if json.loads(
        (parent_folder / "adapter_config.json").read_text(encoding="utf-8")).get("use_dora") else "lora")
    if parent != config.adapter:
        raise InvalidConfigError(f"{config.model} was trained with adapter {parent}; continuing it needs adapter "
                                 f"{parent}, not {config.adapter}", param="adapter")
    model = weights.load_onto(model, parent_folder, trainable=True)
    if parent == "full":
        model.requires_grad_(True)
    return model


def _wrap_lora(model, config: TuneConfig, parent_folder: Path | None, task_type: str = "CAUSAL_LM"):
    """The model as the job trains it: LoRA or DoRA adapters on it, or (adapter full) every weight trainable."""
    from peft import LoraConfig, get_peft_model

    if config.adapter != "full":
        attention.use_for_training(model)  # an adapter's base: its config is never saved with the weights
    if parent_folder is not None:
        model = _continue_from(model, config, parent_folder)
    elif config.adapter == "full":
        model = model.requires_grad_(True)
    else:
        _check_targets(model, config.lora.target_modules)
        lora = LoraConfig(
            r=config.lora.rank,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            use_dora=config.adapter == "dora",
            bias="none",
            task_type=task_type,
        )
        model = get_peft_model(model, lora)
    if weights.is_peft(model):
        fastlora.patch(model)  # plain LoRA layers only; DoRA keeps PEFT's forward
    return model


def base_view(model):
    """A context in which ``model`` computes as its base did: adapters off (a full run is scored before
    training, while its weights are still the base's)."""
    return model.disable_adapter() if weights.is_peft(model) else contextlib.nullcontext()


def data_hashes(config: TuneConfig) -> dict:
    hashes = {"training_file": sha256_file(config.training_file)}
    if config.validation_file is not None:
        hashes["validation_file"] = sha256_file(config.validation_file)
    return hashes


def _chat_task(config, card, placement, tokenizer, max_length, parent_folder, train_msgs, valid_msgs, seed):
    train = [encode_chat(tokenizer, m) for m in train_msgs]
    valid = [encode_chat(tokenizer, m) for m in valid_msgs]
    torch.manual_seed(seed)  # LoRA A matrices are initialised randomly
    model = _wrap_lora(load_causal_lm(card, placement), config, parent_folder)
    pad_id = tokenizer.pad_token_id
    return model, train, valid, lambda batch: collate(batch, pad_id, max_length), sparse_lm_loss, None, None


def _classification_task(config, card, placement, tokenizer, max_length, parent_folder, train_data, valid_data,
                         seed, input_format, parent_labels=None):
    """``parent_labels``: a continued classifier's labels, in its head's order; it keeps them all (its data may
    use some of them) and learns no new one (its head has no row for it)."""
    train_texts, train_labels = texts_and_labels(*train_data)
    valid_texts, valid_labels = texts_and_labels(*valid_data)
    classes = list(parent_labels) if parent_labels else sorted(set(train_labels))
    new = sorted(set(train_labels) - set(classes))
    if new:
        raise InvalidDataError(f"{config.model} was trained on {len(classes)} labels and the training data has "
                               f"labels it was not trained on: {', '.join(new[:10])}; to learn new labels, train "
                               f"a new classifier from {card.id}")
    if len(classes) < 2:
        raise InvalidDataError(f"classification needs at least 2 labels; the training data has {classes}")
    unseen = sorted(set(valid_labels) - set(classes))
    if unseen:
        raise InvalidDataError(f"validation labels never seen in training: {', '.join(unseen[:10])}")
    id2label = dict(enumerate(classes))
    label2id = {label: i for i, label in id2label.items()}
    train = encode_texts(tokenizer, train_texts, train_labels, label2id, max_length, input_format)
    valid = encode_texts(tokenizer, valid_texts, valid_labels, label2id, max_length, input_format)
    torch.manual_seed(seed)  # the head and the LoRA A matrices are initialised randomly
    model = load_classifier(resolve_weights(card), placement, id2label)
    model.config.pad_token_id = tokenizer.pad_token_id
    head = None
    if parent_folder is None:  # a continued model keeps its parent's trained head
        kind, reason = choose_head_init(config.head_init, classes)
        if kind == "labels":
            init_head_from_labels(model, tokenizer, id2label)
        head = {"head_init": kind, "reason": reason}
    model = _wrap_lora(model, config, parent_folder, task_type="SEQ_CLS")
    pad_id = tokenizer.pad_token_id
    return model, train, valid, lambda batch: collate_classes(batch, pad_id), classification_loss, id2label, head


def setup(config: TuneConfig, on_event: EventSink | None = None, *, short_id: str | None = None,
          seed: int | None = None, data_sha256: dict | None = None, resuming: bool = False) -> Setup:
    """Load and check everything a run needs, for a new run or (``resuming``) the run ``short_id``."""
    world = current_world()
    if seed is None:
        seed = config.seed if config.seed is not None else world.broadcast(random.SystemRandom().randrange(2**31))
    parent, parent_folder, base_model, meta = None, None, config.model, {}
    if artifacts.is_finetuned_id(config.model):
        parent_folder, meta = artifacts.resolve_finetuned(config.model)
        parent, base_model = config.model, meta["base_model"]
        check_continuation(config.model, meta.get("task", "chat"), config.task, base_model)
    card = get_card(base_model)
    if not card.fine_tunable:
        raise InvalidConfigError(f"{card.id} cannot be fine-tuned", param="model")
    placement = select_placement(config.device)
    tokenizer = load_tokenizer(card)
    max_length = min(config.max_seq_length or card.context_length, card.context_length)

    data = load_job_data(config, tokenizer, card.context_length, seed)
    train_msgs, train_labels, valid_msgs, valid_labels = data.train, data.train_labels, data.valid, data.valid_labels
    input_format = None
    if config.task == "classification":  # a continued classifier reads texts as its parent does
        continued = meta.get("task") == "classification"
        if continued:
            input_format = artifacts.stored_input_format(meta)
        elif resuming:  # as the run started: its checkpoints were trained so
            input_format = artifacts.run_input_format(artifacts.run_dir(short_id))
        else:
            input_format = input_format_for(tokenizer)
        task = _classification_task(config, card, placement, tokenizer, max_length, parent_folder,
                                    (train_msgs, train_labels), (valid_msgs, valid_labels), seed, input_format,
                                    meta.get("labels") if continued else None)
    else:
        task = _chat_task(config, card, placement, tokenizer, max_length, parent_folder, train_msgs, valid_msgs,
                          seed)
    model, train, valid, make_batch, loss_fn, id2label, head = task
    weighing, train_loss_options = None, {"label_smoothing": config.label_smoothing}
    if config.task == "classification":  # counts by label index (a continued classifier's data may lack some)
        label_weights, why = choose_class_weights(config.class_weights, Counter(e.label for e in train),
                                                  len(id2label))
        weighing = {"class_weights": "none" if label_weights is None else "balanced", "reason": why,
                    "weights": label_weights and {id2label[i]: round(w, 4) for i, w in enumerate(label_weights)}}
        train_loss_options["class_weights"] = label_weights
    hp = resolve_hyperparameters(config, len(train), card.family, seed, class_count(train_msgs, train_labels, config))
    if config.early_stopping not in ("auto", 0) and not valid:
        raise InvalidConfigError("early_stopping needs validation data, and this job has none (give a validation "
                                 "file, or at least 20 training examples to split from)", param="early_stopping")

    short_id = short_id or world.broadcast(artifacts.new_short_id())
    folder = artifacts.run_dir(short_id)
    state = Setup(config, card.id, parent, tokenizer, model, train, valid, hp, max_length, short_id, folder,
                  artifacts.RunLog(folder, enabled=world.is_main), on_event, data_sha256 or data_hashes(config), world,
                  config.task, make_batch, loss_fn, id2label,
                  functools.partial(loss_fn, **train_loss_options))
    state.write_run(status="running", pid=os.getpid(), **({} if resuming else {"created_at": int(time.time()),
                                                                               "input_format": input_format}))
    if not resuming:
        state.emit(f"Created run {short_id}: {len(train)} training and {len(valid)} validation examples, "
                   f"{hp.n_epochs} epoch(s), batch size {hp.batch_size}, learning rate {hp.learning_rate:g}, "
                   f"{placement.device.type}/{placement.dtype_name}"
                   + (f", {world.size} processes" if world.active else ""), hyperparameters=hp.model_dump())
    state.head, state.input_format, state.class_weights = head, input_format, weighing
    if head is not None and not resuming:
        how = "from the label names" if head["head_init"] == "labels" else "at random"
        reads = "each text in the chat template" if input_format == "chat" else "each text alone"
        state.emit(f"Classification head initialised {how} ({head['reason']}); it reads {reads}",
                   type="head_init", input_format=input_format, **head)
    if weighing and weighing["weights"] and not resuming:
        w = weighing["weights"]
        state.emit(f"Training loss weighs each label's examples so every label counts as much ({weighing['reason']}): "
                   f"weights {min(w.values()):.3g} to {max(w.values()):.3g}", type="class_weights", **weighing)
    return state


def _save_model(s: Setup, model_id: str, metadata: dict) -> Path:
    target = s.folder / "model"
    with artifacts.atomic_dir(target) as tmp:
        weights.save(s.model, tmp)
        artifacts.write_json_atomic(tmp / artifacts.METADATA, metadata)
    objects.publish_folder(target, artifacts.METADATA)  # the adapter first, its metadata (the marker) last
    return target


def _versions() -> dict:
    import peft
    import transformers

    import tempering

    return {"tempering": tempering.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def _classification_report(s: Setup) -> dict | None:
    if not s.valid:
        return None
    probabilities = predict(s.model, s.valid, s.tokenizer.pad_token_id)
    report = classification_metrics([e.label for e in s.valid], probabilities.argmax(-1).tolist(), s.id2label)
    s.emit(f"Validation accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}",
           type="classification_eval", **report)
    return report


def _start_or_resume(config: TuneConfig, on_event, resume: bool,
                     run_id: str | None) -> tuple[Setup, Path | None, dict | None]:
    if run_id is not None and artifacts.read_run(artifacts.run_dir(run_id)) is None:
        return setup(config, on_event, short_id=run_id), None, None  # a new run under the caller's id
    if not resume and run_id is None:
        return setup(config, on_event), None, None
    hashes = data_hashes(config)
    world = current_world()
    short_id = run_id or world.broadcast(artifacts.find_resumable(config.model_dump(mode="json"), hashes)
                                         if world.is_main else None)
    if short_id is None:
        raise InvalidConfigError("no interrupted run was started with exactly this config and these files; "
                                 "run without --resume to start a new one", param="resume")
    run = artifacts.read_run(artifacts.run_dir(short_id))
    if run.get("data_sha256") != hashes:
        raise InvalidConfigError(f"run {short_id} was started on different data files; they changed since",
                                 param="training_file")
    s = setup(config, on_event, short_id=short_id, seed=run["hyperparameters"]["seed"], data_sha256=hashes,
              resuming=True)
    if s.world.is_main:
        discard_partial(s.folder)  # a killed process's half-written checkpoint: never trusted, now gone
    return s, latest_checkpoint(s.folder), run.get("base_eval")


def _keep_best(s: Setup, fitted: dict, model_id: str) -> None:
    """Make the run's model the best epoch's checkpoint (``train.selection``) and record which and why."""
    from tempering.train.refs import api_checkpoint_id

    selection = fitted["selection"]
    s.selection = selection.summary(early_stopped=fitted["early_stopped"], planned_epochs=s.hp.n_epochs,
                                    checkpoint_id=lambda step: api_checkpoint_id(model_id, step))
    if s.selection is None:
        return
    best = selection.best
    if best.epoch != selection.history[-1].epoch:
        if not objects.pull_folder(best.checkpoint, COMPLETE):  # taken over from another machine: only there
            raise CheckpointError(f"the best checkpoint {best.checkpoint.name} is neither here nor in the "
                                  f"artifact store", param="checkpoint")
        weights.load_trainable(s.model, best.checkpoint)
    s.write_run(selection=s.selection)
    s.emit(f"Kept the checkpoint of epoch {best.epoch} (step {best.step}) as the fine-tuned model: "
           f"{s.selection['reason']}", type="best_checkpoint", **s.selection)


# Called on process 0 once the model is saved, with (setup, model id, base and final validation losses); what
# it returns is the result's ``evaluation``. The job's caller passes ``evaluate.job.evaluate_after_tune``:
# training knows nothing of evaluation.
AfterSave = Callable[["Setup", str, dict, dict], "dict | None"]


def tune(config: TuneConfig, *, on_event: EventSink | None = None, resume: bool = False,
         should_stop: Callable[[], bool] | None = None, run_id: str | None = None,
         after_save: AfterSave | None = None) -> TuneResult:
    """Fine-tune ``config.model`` on ``config.training_file``; the result names the new model.

    ``resume`` continues the newest interrupted run with the same config and data from its latest
    complete checkpoint. ``run_id`` names the run (a job service passes its own): a new run gets that id,
    an existing one is resumed. ``should_stop`` is polled between steps; when it returns True the run
    writes a checkpoint and raises ``RunCancelled``.
    """
    started = time.perf_counter()
    s, checkpoint, base = _start_or_resume(config, on_event, resume, run_id)
    if base is None:
        with base_view(s.model):
            base = evaluate(s.model, s.valid, s.make_batch, s.loss_fn, world=s.world)
        s.write_run(base_eval=base)
        if base["loss"] is not None:
            s.emit(f"Base model validation loss {base['loss']:.4f}", type="base_eval", **base)
    try:
        fitted = fit(s, resume_from=checkpoint, should_stop=should_stop)
    except RunCancelled:
        s.write_run(status="cancelled")
        raise
    except BaseException:
        # a full disk or an unreachable artifact store: the error that got us here is the one to report
        with contextlib.suppress(OSError, objects.ArtifactStoreError):
            s.write_run(status="failed")
        raise
    model_id = artifacts.model_id_for(s.base_model, config.suffix, s.short_id)
    _keep_best(s, fitted, model_id)
    final = evaluate(s.model, s.valid, s.make_batch, s.loss_fn, world=s.world)
    classification = _classification_report(s) if s.task == "classification" else None
    s.log.metrics_row({"step": fitted["steps"], "full_valid_loss": final["loss"],
                       "full_valid_mean_token_accuracy": final["mean_token_accuracy"]})
    trained_tokens = sum(len(e) for e in s.train) * fitted["epochs_trained"]
    seconds = time.perf_counter() - started
    metrics = {"train_loss": fitted["train_loss"], "full_valid_loss": final["loss"],
               "full_valid_mean_token_accuracy": final["mean_token_accuracy"],
               "full_valid_perplexity": final["perplexity"], "base_valid_loss": base["loss"],
               "base_valid_mean_token_accuracy": base["mean_token_accuracy"], "classification": classification}
    metadata = {
        "id": model_id, "object": "model", "base_model": s.base_model, "parent_model": s.parent, "task": s.task,
        "labels": list(s.id2label.values()) if s.id2label else None, "input_format": s.input_format,
        "created_at": int(time.time()), "run_id": s.short_id,
        "config": config.model_dump(mode="json"), "hyperparameters": s.hp.model_dump(),
        "data_sha256": s.data_sha256, "n_train_examples": len(s.train), "n_valid_examples": len(s.valid),
        "trained_tokens": trained_tokens, "seconds": round(seconds, 2), "metrics": metrics,
        "prefix_sharing": fitted.get("prefix_sharing"), "adapter": config.adapter, "selection": s.selection,
        "epochs_trained": fitted["epochs_trained"], "head": s.head, "class_weights": s.class_weights,
        "versions": _versions(),
    }
    output = s.folder / "model"
    if s.world.is_main:
        _save_model(s, model_id, metadata)
    s.world.barrier()  # every process returns only once the model exists

    # ---- the caller's step after saving (the job evaluation: base vs fine-tuned → evaluation.json) ----
    run_after = after_save is not None and config.evaluate and s.world.is_main
    evaluation = after_save(s, model_id, base, final) if run_after else None
    s.world.barrier()

    s.write_run(status="succeeded", model_id=model_id)
    s.emit(f"New fine-tuned model {model_id}", type="succeeded", model_id=model_id, output_dir=str(output))
    if s.world.is_main:
        artifacts.publish_run(s.folder)  # events, results and the evaluation report, as they ended
    return TuneResult(
        model_id=model_id, base_model=s.base_model, output_dir=str(output), run_dir=str(s.folder),
        trained_tokens=trained_tokens, seconds=round(seconds, 2), train_loss=fitted["train_loss"],
        valid_loss=final["loss"], valid_mean_token_accuracy=final["mean_token_accuracy"],
        base_valid_loss=base["loss"], base_valid_mean_token_accuracy=base["mean_token_accuracy"],
        n_train_examples=len(s.train), n_valid_examples=len(s.valid), hyperparameters=s.hp,
        task=s.task, classification=classification, evaluation=evaluation, selection=s.selection,
    )
