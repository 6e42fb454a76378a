"""The automatic evaluation at the end of every fine-tuning job.

``evaluate_job`` takes the finished run (the recipe's ``Setup``, its base and final validation losses and the
validation conversations) and writes ``evaluation.json`` to the run folder: the loss-based metrics training
already computed on the whole validation set, each kept checkpoint's validation loss (read from its
``metrics.json``, or scored when a mid-epoch checkpoint lacks it), and generation-based metrics of the base
and the saved fine-tuned model through the serving path on at most ``config.eval_max_examples`` examples.
Whether chat answers are labels is ``config.eval_answers``, "auto" reading the training file's answers (the
whole file when the validation set was split off it: the label set is the same). Chat jobs also get the
red-team check (``evaluate.redteam``: unsafe-answer and over-refusal rates of both models, filter off).
Runs on process 0 only.
Knows nothing about HTTP or printing; the recipe emits the verdict as an event.
"""

from __future__ import annotations

import json

from tempering.evaluate.compare import evaluate_examples, training_answers_of
from tempering.evaluate.report import CheckpointLoss, EvaluationReport, LossMetrics, Selection, write_report
from tempering.train import refs


def checkpoint_losses(s, model_id: str) -> list[CheckpointLoss]:
    """Each complete checkpoint's validation loss: from its metrics.json (per-epoch checkpoints have it),
    else scored by loading its adapter into the run's model, which is put back as it was afterwards."""
    from tempering.train import weights
    from tempering.train.checkpoint import list_checkpoints
    from tempering.train.loss import evaluate

    rows, final_state = [], None
    for folder in list_checkpoints(s.folder):
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        step = int(metrics.get("step", folder.name.removeprefix("step-")))
        result = {"loss": metrics.get("valid_loss"), "perplexity": metrics.get("valid_perplexity"),
                  "mean_token_accuracy": metrics.get("valid_mean_token_accuracy")}
        if result["loss"] is None and s.valid:
            if final_state is None:
                final_state = {k: v.detach().clone() for k, v in weights.trainable_state(s.model).items()}
            weights.load_trainable(s.model, folder)
            result = evaluate(s.model, s.valid, s.make_batch, s.loss_fn)
        kept = (s.selection or {}).get("best_step")
        rows.append(CheckpointLoss(checkpoint=refs.checkpoint_name(model_id, step), step=step, **result,
                                   selection_value=metrics.get("selection_value"), selected=step == kept))
    if final_state is not None:
        weights.set_trainable_state(s.model, final_state)
    return rows


def evaluate_job(s, *, model_id: str, base: dict, final: dict, valid_messages: list[list[dict]],
                 valid_labels: list[str] | None) -> EvaluationReport | None:
    """Evaluate the run's fine-tuned model against its base on the validation set and store the report."""
    if not valid_messages:
        return None
    n = len(s.valid)
    losses = {"candidate": LossMetrics(**final, n_examples=n)}
    if s.task == "chat":  # the base's loss on the classification task is a random head's: not a baseline
        losses["baseline"] = LossMetrics(**base, n_examples=n)
    config = s.config
    training = None
    if s.task == "chat" and config.eval_answers == "auto":
        training = training_answers_of(config.training_file, config.data_format, config.text_column,
                                       config.label_column)
    report = evaluate_examples(
        refs.resolve(model_id), refs.resolve(s.base_model), valid_messages,
        data=f"validation set of run {s.short_id} ({n} examples)", declared_labels=valid_labels,
        answers=config.eval_answers, training_answers=training, max_examples=config.eval_max_examples,
        device=config.device, losses=losses, checkpoints=checkpoint_losses(s, model_id))
    report.selection = Selection(**s.selection) if s.selection else None
    if s.task == "chat":
        report.safety = red_team(s, model_id)
    write_report(s.folder, report)
    return report


def red_team(s, model_id: str):
    """The red-team check of base and fine-tuned (``evaluate.redteam``); its failure is a warning and leaves
    the rest of the report standing."""
    from tempering.evaluate.redteam import evaluate_safety

    try:
        return evaluate_safety(refs.resolve(model_id), refs.resolve(s.base_model), s.config.device)
    except Exception as exc:  # noqa: BLE001 - the loss and generation metrics still stand
        s.emit(f"Red-team safety check failed: {exc}", type="safety_check_failed", level="warning", error=repr(exc))
        return None


def evaluate_after_tune(s, model_id: str, base: dict, final: dict) -> dict | None:
    """The recipe's ``after_save`` step: the automatic evaluation report, emitted as an event. Its failure
    is a warning, never a failed job (the model is saved)."""
    from tempering.train.jobdata import read_job_data

    try:
        data = read_job_data(s.config, s.hp.seed)
        report = evaluate_job(s, model_id=model_id, base=base, final=final, valid_messages=data.valid,
                              valid_labels=data.valid_labels)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the fine-tuned model stands
        s.emit(f"Evaluation failed: {exc}", type="evaluation_failed", level="warning", error=repr(exc))
        return None
    if report is None or report.verdict is None:
        return None
    s.emit(f"Evaluation: {report.verdict.message}", type="evaluation", **report.summary())
    return report.summary()


def tune_and_evaluate(config, **options):
    """``train.recipe.tune`` followed by the job evaluation (when ``config.evaluate``): what a fine-tuning
    job is, for every caller (the CLI, the job runner, the portal through the service)."""
    from tempering.train.recipe import tune

    return tune(config, after_save=evaluate_after_tune, **options)
