"""The training loop: epochs of length-grouped batches, checkpoints, exact resume and cancellation.

Where a run is (epoch, batches done in it) is all the data position there is: batches are a pure
function of (seed, epoch), so resuming replays the same batches from the same point, with the optimizer,
scheduler and RNG states restored from the checkpoint. Cancellation is checked at step boundaries; the
loop then writes a checkpoint at that step so nothing done is lost. Knows nothing about HTTP or printing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tempering.errors import TemperingError
from tempering.train.batching import common_prefix_length, epoch_batches, shareable_length
from tempering.train.checkpoint import known_checkpoints, restore_checkpoint, save_checkpoint
from tempering.train.loss import evaluate
from tempering.train.selection import Scored, Selection, rebuild, score_epoch


class RunCancelled(TemperingError):
    code = "cancelled"


@dataclass
class Position:
    step: int = 0
    epoch: int = 1  # the epoch being trained (1-based)
    batches_done: int = 0  # batches of that epoch already trained


def make_optimizer(params: list, name: str, learning_rate: float, weight_decay: float):
    """The job's optimizer over ``params``: AdamW, SGD with (Nesterov) momentum 0.9, or transformers' Adafactor
    driven by the job's learning rate and schedule (no relative step, no parameter scaling)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=learning_rate, weight_decay=weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)


def _optimizer_and_schedule(model, config, learning_rate: float, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config.optimizer, learning_rate, config.weight_decay)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)


def _train_step(s, examples: list, trainable: list) -> dict:
    """Forward and backward on this process's share of one global batch; gradients end up summed over
    processes and normalised by the global trained-token count, then clipped."""
    mine = s.world.shard(examples)
    loss_sum, n_tokens, n_correct, tokens = 0.0, 0, 0, 0
    if mine:
        batch = s.make_batch(mine)
        result = s.train_loss_fn(s.model, batch)
        loss_sum, n_tokens, n_correct = float(result.loss_sum.detach()), result.n_tokens, result.n_correct
        tokens = sum(len(e) for e in mine)  # the examples' tokens, as billed (a batch may skip untrained tails)
    loss_sum, n_tokens, n_correct, tokens = s.world.sum([loss_sum, n_tokens, n_correct, tokens])
    if mine:
        (result.loss_sum / max(n_tokens, 1)).backward()
    for p in trainable:  # every process must all-reduce the same tensors, even with an empty share
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    s.world.sum_gradients(trainable)
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    return {"loss_sum": loss_sum, "n_tokens": int(n_tokens), "n_correct": int(n_correct), "tokens": int(tokens)}


def _prompts(s) -> list[tuple]:
    """Each example's shareable leading tokens, for grouping rows by shared prefix: a chat example's up to its
    first trained token, a classification example's all but the last (the one the head reads)."""
    if s.task != "chat":
        return [tuple(e.input_ids[: len(e) - 1]) for e in s.train]
    return [tuple(e.input_ids[: shareable_length(e, s.max_length)]) for e in s.train]


def prefix_sharing_plan(s, lengths: list[int], prompts: list) -> dict:
    """Prompt-prefix tokens the whole job computes once and skips (over every epoch, each process's share of
    each batch): a pure function of the data, seed and batch size, like the batches themselves."""
    computed = skipped = 0
    for epoch in range(1, s.hp.n_epochs + 1):
        for index in epoch_batches(lengths, s.hp.batch_size, s.hp.seed, epoch, prompts):
            mine = [prompts[i] for i in s.world.shard(index)]  # the common prefix of the prompts is the batch's
            prefix = common_prefix_length(mine, min(map(len, mine))) if mine else 0
            computed += prefix
            skipped += prefix * (len(mine) - 1)
    total = sum(lengths) * s.hp.n_epochs
    return {"prefix_tokens_computed": computed, "prefix_tokens_skipped": skipped, "tokens": total,
            "skipped_fraction": skipped / total if total else 0.0}


def _report_prefix_sharing(s, lengths: list[int], prompts) -> dict:
    """The job's prefix tokens computed and skipped, into run.json and an event."""
    sharing = prefix_sharing_plan(s, lengths, prompts)
    s.write_run(prefix_sharing=sharing)
    s.emit(f"Shared prompt prefixes: {sharing['prefix_tokens_skipped']} of {sharing['tokens']} tokens skipped "
           f"({sharing['skipped_fraction']:.1%}), {sharing['prefix_tokens_computed']} computed once per batch",
           type="prefix_sharing", **sharing)
    return sharing


def fit(s, *, resume_from: Path | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train ``s`` (a ``recipe.Setup``) for its resolved epochs; returns the last epoch's train loss."""
    lengths = [len(e) for e in s.train]
    prompts = _prompts(s)
    steps_per_epoch = math.ceil(len(s.train) / s.hp.batch_size)
    total_steps = steps_per_epoch * s.hp.n_epochs
    optimizer, scheduler = _optimizer_and_schedule(s.model, s.config, s.hp.learning_rate, total_steps)
    selection = Selection(s.config.resolved_selection_metric(), s.config.resolved_patience())
    pos = Position()
    sums = {"loss": 0.0, "tokens": 0}  # the current epoch's running train loss, kept across a resume
    if resume_from is not None:
        state = restore_checkpoint(resume_from, model=s.model, optimizer=optimizer, scheduler=scheduler)
        pos = Position(step=state.step, epoch=state.epoch, batches_done=state.batches_done)
        sums = state.epoch_sums
        s.log.truncate_results(pos.step)
        rebuild(selection, [p for p in known_checkpoints(s.folder) if p <= resume_from])
        s.emit(f"Resumed from checkpoint at step {pos.step}", type="resumed", step=pos.step,
               checkpoint=str(resume_from))
    sharing = _report_prefix_sharing(s, lengths, prompts)
    s.emit("Fine-tuning started", type="started", total_steps=total_steps, steps_per_epoch=steps_per_epoch,
           step=pos.step)
    every = s.config.checkpoint_every_steps

    def checkpoint(metrics: dict) -> Path:
        path = s.folder / "checkpoints" / f"step-{pos.step:06d}"
        if s.world.is_main:
            path = save_checkpoint(s.folder, model=s.model, optimizer=optimizer, scheduler=scheduler,
                                   step=pos.step, epoch=pos.epoch, batches_done=pos.batches_done,
                                   metrics=metrics, epoch_sums=sums)
        s.world.barrier()
        return path

    trainable = [p for p in s.model.parameters() if p.requires_grad]

    s.model.train()
    epoch_loss, stopped = None, selection.should_stop()  # a run stopped early and killed before it finished
    while pos.epoch <= s.hp.n_epochs and not stopped:
        for index in epoch_batches(lengths, s.hp.batch_size, s.hp.seed, pos.epoch, prompts)[pos.batches_done :]:
            if s.world.any(should_stop is not None and should_stop()):
                path = checkpoint({"cancelled": True})
                s.emit(f"Cancelled at step {pos.step}; checkpoint kept at {path}", type="cancelled",
                       level="warning", step=pos.step, checkpoint=str(path))
                raise RunCancelled(f"run {s.short_id} cancelled at step {pos.step}/{total_steps}; its "
                                   f"checkpoint is kept, and the same command with --resume continues it")
            began = time.perf_counter()
            step_stats = _train_step(s, [s.train[i] for i in index], trainable)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            pos.step += 1
            pos.batches_done += 1
            loss = step_stats["loss_sum"] / max(step_stats["n_tokens"], 1)
            sums["loss"] += step_stats["loss_sum"]
            sums["tokens"] += step_stats["n_tokens"]
            row = {"step": pos.step, "train_loss": loss,
                   "train_mean_token_accuracy": step_stats["n_correct"] / max(step_stats["n_tokens"], 1)}
            seconds = time.perf_counter() - began
            s.log.metrics_row(row)
            s.emit(f"Step {pos.step}/{total_steps}: training loss={loss:.4f}", type="metrics", epoch=pos.epoch,
                   **row, tokens=step_stats["tokens"], seconds=seconds,
                   tokens_per_second=step_stats["tokens"] / seconds,
                   learning_rate=scheduler.get_last_lr()[0], total_steps=total_steps)
            if every and pos.step % every == 0 and pos.batches_done < steps_per_epoch:
                checkpoint({"train_loss": loss})
        epoch_loss = sums["loss"] / sums["tokens"] if sums["tokens"] else None
        stopped = _end_epoch(s, pos, epoch_loss, selection, checkpoint)
        sums = {"loss": 0.0, "tokens": 0}
    return {"train_loss": epoch_loss, "steps": pos.step, "prefix_sharing": sharing, "selection": selection,
            "early_stopped": stopped, "epochs_trained": pos.epoch - 1}


def _end_epoch(s, pos: Position, epoch_loss: float | None, selection: Selection, checkpoint) -> bool:
    """Validate, score and checkpoint the epoch just trained; whether to stop early."""
    valid = evaluate(s.model, s.valid, s.make_batch, s.loss_fn, world=s.world)
    value, classification = score_epoch(s, valid)
    metrics = {"train_loss": epoch_loss, "valid_loss": valid["loss"],
               "valid_mean_token_accuracy": valid["mean_token_accuracy"], "valid_perplexity": valid["perplexity"]}
    if classification is not None:
        metrics |= {"valid_accuracy": classification["accuracy"], "valid_macro_f1": classification["macro_f1"]}
    if valid["loss"] is not None:
        s.log.metrics_row({"step": pos.step, "valid_loss": valid["loss"],
                           "valid_mean_token_accuracy": valid["mean_token_accuracy"]})
    done = pos.epoch
    pos.epoch, pos.batches_done = pos.epoch + 1, 0  # the checkpoint points at the next epoch's start
    scored = {} if value is None else {"selection_metric": selection.metric, "selection_value": value}
    path = checkpoint({"epoch_completed": done, **metrics, **scored})
    improved = value is not None and selection.add(Scored(done, pos.step, value, path, valid["loss"]))
    s.emit(f"Epoch {done}/{s.hp.n_epochs} done: " + ", ".join(
        f"{k}={v:.4f}" for k, v in metrics.items() if v is not None)
        + (f"; validation {selection.metric} {value:.4f}" + (" (best so far)" if improved else "")
           if value is not None else ""),
        type="epoch", epoch=done, step=pos.step, checkpoint=str(path), **metrics, **scored,
        best_so_far=improved)
    if not selection.should_stop() or done >= s.hp.n_epochs:
        return False
    best = selection.best
    s.emit(f"Stopped early after epoch {done} of {s.hp.n_epochs}: validation {selection.metric} has not improved "
           f"for {selection.stale_epochs} epoch(s) since epoch {best.epoch} ({best.value:.4f}; patience "
           f"{selection.patience})", type="early_stopped", epoch=done, step=pos.step, best_epoch=best.epoch,
           best_step=best.step, metric=selection.metric, best_value=best.value, patience=selection.patience)
    return True
