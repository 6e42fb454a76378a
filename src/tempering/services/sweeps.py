"""Hyperparameter sweeps: "adjust the hyperparameters and train again" as one job. A sweep runs ``n_trials``
child fine-tuning jobs over a declarative search space (``train.sweep``); Optuna picks each trial's values
(TPE, seeded) and prunes trials whose validation curve falls behind (MedianPruner); the best complete trial's
model becomes the sweep's ``fine_tuned_model``.

Trials are ordinary jobs (``services.jobs.create_job``): the same validation, quotas (they count against
``concurrent_jobs`` and ``trained_tokens_per_day`` like any job), queue, workers and executors (so Ray too),
events and checkpoints; a pruned trial's job is cancelled through ``services.jobs.request_stop``.

Who advances a sweep: ``advance_sweeps``, which every worker calls between jobs, while it waits for work and
between heartbeats of the job it runs (``jobs.worker``'s ``between_jobs`` hook, wired by the API and
``tempering worker``). The sweep's whole state lives in the ``sweeps`` and ``sweep_trials`` rows; each step
rebuilds the Optuna study from them by ask-and-tell (every past trial enqueued with its parameters, asked,
its per-epoch values reported, told its outcome) into in-memory storage, so no memory is carried between
steps and a restarted server or any other worker continues where the last one stopped. One sweep is advanced
by one worker at a time: its row is locked for the step (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's
write lock), and a step creates a trial's job and its row in one transaction, so a crash leaves no half trial.

Pruning is judged epoch by epoch over the whole curve seen so far (as if the driver had watched every epoch),
so a trial's fate depends on the data, not on when a worker happened to look.
"""

from __future__ import annotations

import logging
import math
import secrets

from sqlalchemy import select

from tempering.errors import InvalidStateError, TemperingError, not_found
from tempering.services import audit
from tempering.services import jobs as job_service
from tempering.store.models import Job, JobCheckpoint, JobEvent, Sweep, SweepTrial, looks_like_id, now
from tempering.store.pages import Page, newest_first
from tempering.store.quotas import effective_quotas
from tempering.train.sweep import (
    Objective,
    ParameterSpec,
    Pruning,
    apply,
    check_initial_trials,
    check_space,
    default_space,
)

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")  # a sweep's final states (its trials' jobs: job_service.TERMINAL)


def create_sweep(session, project_id: str, store, fields: dict, *, training_file: str,
                 validation_file: str | None = None, n_trials: int, max_concurrent_trials: int = 1,
                 search_space: list[ParameterSpec] | None = None, objective: Objective | None = None,
                 pruning: Pruning | None = None, initial_trials: list[dict] | None = None,
                 metadata: dict | None = None) -> Sweep:
    """A sweep over ``search_space`` (the default: learning-rate multiplier, epochs, LoRA rank) on the base
    job config ``fields``: everything checked up front, every problem named by its field; its first trials
    are created at once."""
    fields = {**fields, "seed": fields.get("seed") if fields.get("seed") is not None else secrets.randbelow(2**31)}
    plan = job_service.job_config(session, project_id, store, fields, training_file=training_file,
                                  validation_file=validation_file)
    base = plan.config.model_dump(mode="json")
    space = search_space if search_space is not None else default_space()
    check_space(space, base)
    initial = initial_trials or []
    check_initial_trials(initial, space, base, n_trials)
    per_epoch = _tokens_per_epoch(store, plan)
    _check_quota(session, project_id, per_epoch, space, plan.config)
    sweep = Sweep(project_id=project_id, model=plan.config.model, training_file=plan.training.id,
                  validation_file=plan.validation.id if plan.validation else None, suffix=plan.config.suffix,
                  seed=plan.config.seed, config=job_service.stored_config(plan.config),
                  search_space=[s.model_dump(exclude_none=True) for s in space],
                  objective=(objective or Objective()).model_dump(), pruning=(pruning or Pruning()).model_dump(),
                  initial_trials=initial, n_trials=n_trials, max_concurrent_trials=max_concurrent_trials,
                  tokens_per_epoch=per_epoch, user_metadata=metadata, status="queued")
    session.add(sweep)
    session.flush()
    audit.record(session, "sweep.created", project_id=project_id, target=sweep.id, model=sweep.model,
                 n_trials=n_trials)
    advance(session, sweep, store)
    return sweep


def _tokens_per_epoch(store, plan) -> int | None:
    """One epoch's trained tokens, read as the estimate reads them (None: the data cannot be read now; the
    trials' jobs then fail in validating_files naming every problem)."""
    from tempering.services._files import named
    from tempering.train.estimate import estimate_job  # torch loads here

    paths = {store.file_path(row.id): row.filename for row in (plan.training, plan.validation) if row is not None}
    try:
        with named(paths):
            return estimate_job(plan.config).tokens_per_epoch
    except Exception:  # noqa: BLE001 - as services.jobs: the runner's checks report it in full
        return None


def _most_epochs(space: list[ParameterSpec], config) -> int | None:
    for spec in space:
        if spec.path == "hyperparameters.n_epochs" and spec.type != "categorical":
            return int(spec.high)
        if spec.path == "hyperparameters.n_epochs":  # choices: whole numbers, or "auto" (not known yet)
            return max((c for c in spec.choices if isinstance(c, int)), default=None)
    epochs = config.hyperparameters.n_epochs
    return epochs if isinstance(epochs, int) else None


def _check_quota(session, project_id: str, per_epoch: int | None, space, config) -> None:
    """The longest trial must fit a whole day of the project's trained_tokens_per_day quota (it could never
    start otherwise), as a single job must."""
    epochs = _most_epochs(space, config)
    if per_epoch is None or epochs is None:
        return
    quota = effective_quotas(session, project_id).trained_tokens_per_day
    if per_epoch * epochs > quota:
        raise TemperingError(f"the longest trial would train about {per_epoch * epochs:,} tokens ({epochs} "
                             f"epochs), more than the project's trained_tokens_per_day quota of {quota:,}; search "
                             "fewer epochs or train on less data", param="search_space", code="quota_exceeded")


def owned_sweep(session, project_id: str, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id) if looks_like_id(sweep_id) else None
    if sweep is None or sweep.project_id != project_id:
        raise not_found("sweep", sweep_id[:80], "sweep_id")
    return sweep


def list_sweeps(session, project_id: str, *, after: str | None, limit: int) -> Page:
    anchor = owned_sweep(session, project_id, after) if after else None
    return newest_first(session, select(Sweep).where(Sweep.project_id == project_id), Sweep, anchor, limit)


def trials_of(session, sweep_id: str) -> list[SweepTrial]:
    return list(session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id)
                                .order_by(SweepTrial.number)))


def trial_jobs(session, trials: list[SweepTrial]) -> dict[str, Job]:
    ids = [t.job_id for t in trials]
    return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}


def cancel_sweep(session, sweep: Sweep) -> Sweep:
    """Cancel the sweep and, through the jobs' own cancel path, every trial still running."""
    if sweep.status in TERMINAL:
        raise InvalidStateError(f"sweep {sweep.id} already {sweep.status}", param="sweep_id")
    _stop_trials(session, sweep, "cancelled")
    sweep.status, sweep.finished_at = "cancelled", now()
    audit.record(session, "sweep.cancelled", project_id=sweep.project_id, target=sweep.id)
    return sweep


def _stop_trials(session, sweep: Sweep, state: str) -> None:
    for trial in trials_of(session, sweep.id):
        if trial.state == "running":
            trial.state, trial.finished_at = state, now()
            _cancel_job(session, session.get(Job, trial.job_id))


def _cancel_job(session, job: Job) -> None:
    if job is not None and job.status not in job_service.TERMINAL and job.stop_requested != "cancel":
        job_service.request_stop(session, job, "cancel")


# ------------------------------------------------------------------ the driver


def advance_sweeps(db, store=None) -> int:
    """Advance every unfinished sweep one step (see the module's docstring); returns how many were advanced.
    Cheap when there is none: one read."""
    with db.session(write=False) as session:
        ids = list(session.scalars(select(Sweep.id).where(Sweep.status.in_(ACTIVE))))
    if not ids:
        return 0
    if store is None:
        from tempering.settings import get_settings
        from tempering.store.artifacts import ArtifactStore

        store = ArtifactStore(get_settings().artifacts_dir)
    done = 0
    for sweep_id in ids:
        try:
            with db.session() as session:
                sweep = session.scalars(select(Sweep).where(Sweep.id == sweep_id, Sweep.status.in_(ACTIVE))
                                        .with_for_update(skip_locked=True)).first()
                if sweep is not None:  # None: finished meanwhile, or another worker holds it now
                    advance(session, sweep, store)
                    done += 1
        except Exception:  # a bug in one sweep must not stop the worker that drives it, nor the other sweeps
            log.exception("could not advance sweep %s", sweep_id)
    return done


def advance(session, sweep: Sweep, store) -> None:
    """One step: bring running trials up to date from their jobs (pruning the ones that fall behind), start
    new trials up to ``max_concurrent_trials`` and ``n_trials``, and finish the sweep when every trial ended."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = trials_of(session, sweep.id)
    jobs = trial_jobs(session, trials)
    metric = sweep.objective["metric"]
    study, live = _replay(optuna, sweep, trials)
    for trial in trials:
        if trial.state != "running":
            continue
        job = jobs[trial.job_id]
        trial.intermediate = curve(session, job.id, metric)
        ended = job.status in job_service.TERMINAL  # ran to its end (or failed): settled, not judged
        if _report_and_judge(sweep, live[trial.number], trial.intermediate, judge=not ended):
            trial.state, trial.finished_at = "pruned", now()
            study.tell(live[trial.number], state=optuna.trial.TrialState.PRUNED)
            _cancel_job(session, job)
        elif ended:
            _settle(trial, job, objective_of(session, job, metric))
            _tell(optuna, study, live[trial.number], trial)
    running = sum(t.state == "running" for t in trials)
    try:
        while running < sweep.max_concurrent_trials and len(trials) < sweep.n_trials:
            trials.append(_start_trial(session, optuna, study, sweep, len(trials), store))
            running += 1
    except TemperingError as exc:  # the files were deleted, a quota refuses: the sweep cannot go on
        _stop_trials(session, sweep, "cancelled")
        sweep.status, sweep.finished_at = "failed", now()
        sweep.error = {"code": exc.code, "message": f"trial {len(trials)} could not start: {exc.message}",
                       "param": exc.param}
        return
    if running and sweep.status == "queued":
        sweep.status = "running"
    if not running and len(trials) >= sweep.n_trials:
        _finish(sweep, trials, jobs)


def _by_step(session, job_id: str, metric: str) -> dict[int, float | None]:
    """The job's ``metric`` at each per-epoch checkpoint, by step (a resumed run's repeat counts once); None
    for a value that is not finite (a diverged loss: JSON, and PostgreSQL's json, have no NaN)."""
    rows = session.execute(select(JobCheckpoint.step_number, JobCheckpoint.metrics)
                           .where(JobCheckpoint.job_id == job_id).order_by(JobCheckpoint.step_number)).all()
    return {step: (value if isinstance(value := metrics.get(metric), int | float) and math.isfinite(value)
                   else None) for step, metrics in rows if metric in metrics}


def curve(session, job_id: str, metric: str) -> dict[str, float | None]:
    """The job's ``metric`` at each epoch, from its per-epoch checkpoints: epoch (1, 2, … as text) → value."""
    return {str(epoch): value for epoch, value in enumerate(_by_step(session, job_id, metric).values(), start=1)}


def objective_of(session, job: Job, metric: str) -> float | None:
    """A finished job's score: ``metric`` at the checkpoint its model is — the epoch a best-checkpoint event
    (``best_step`` in its data) names, else the last epoch's."""
    by_step = _by_step(session, job.id, metric)
    events = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.type == "message",
                                                         JobEvent.data.is_not(None)).order_by(JobEvent.seq.desc()))
    kept = next((data["best_step"] for data in events if isinstance(data, dict) and "best_step" in data), None)
    if kept in by_step:
        return by_step[kept]
    return list(by_step.values())[-1] if by_step else None


def _settle(trial: SweepTrial, job: Job, value: float | None) -> None:
    trial.finished_at = now()
    if job.status != "succeeded":
        trial.state = "failed" if job.status == "failed" else "cancelled"
        return
    if value is None:  # no validation set, or the loss diverged
        trial.state = "failed"
    else:
        trial.state, trial.value = "complete", float(value)


def _replay(optuna, sweep: Sweep, trials: list[SweepTrial]):
    """The study as the rows record it, by ask-and-tell into in-memory storage: each past trial enqueued with
    its parameters, asked, its values reported and its outcome told; running trials are asked and left
    running (returned by number, to be judged and told by the caller)."""
    study = optuna.create_study(direction=Objective(**sweep.objective).direction, sampler=_sampler(optuna, sweep, 0),
                                pruner=_pruner(optuna, sweep))
    distributions = _distributions(optuna, sweep)
    live = {}
    for trial in trials:
        study.enqueue_trial(trial.params)
        asked = study.ask(distributions)
        if trial.state == "running":
            live[trial.number] = asked
        else:
            for epoch, value in trial.intermediate.items():
                if value is not None:
                    asked.report(value, int(epoch))
            _tell(optuna, study, asked, trial)
    return study, live


def _tell(optuna, study, asked, trial: SweepTrial) -> None:
    """Tell the study how ``trial`` (its values reported already) ended."""
    State = optuna.trial.TrialState
    if trial.state == "complete":
        study.tell(asked, trial.value)
    else:
        study.tell(asked, state=State.PRUNED if trial.state == "pruned" else State.FAIL)


def _report_and_judge(sweep: Sweep, asked, intermediate: dict[str, float | None], judge: bool = True) -> bool:
    """Report a running trial's curve so far, epoch by epoch, and whether the pruner stops it at any of them
    (a value that was not finite — a diverged loss — prunes at once). ``judge`` False: its job has ended, so
    the whole curve is reported and nothing is stopped (a trial that ran to its end is complete, whatever its
    curve; pruning a finished job would save nothing and misreport it)."""
    enabled = Pruning(**sweep.pruning).enabled and judge
    for epoch, value in intermediate.items():
        if value is None:
            if not judge:
                continue
            return enabled
        asked.report(value, int(epoch))
        if enabled and asked.should_prune():
            return True
    return False


def _sampler(optuna, sweep: Sweep, number: int):
    """TPE seeded by the sweep's seed and the trial's number: trial N's values are a function of the history
    and the seed alone, whoever asks and whenever. Its first third of the trials (2 to 10) are random."""
    startup = min(10, max(2, sweep.n_trials // 3))
    return optuna.samplers.TPESampler(seed=(sweep.seed + number) % 2**32, n_startup_trials=startup)


def _pruner(optuna, sweep: Sweep):
    pruning = Pruning(**sweep.pruning)
    if not pruning.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=pruning.n_startup_trials,
                                       n_warmup_steps=pruning.n_warmup_epochs)


def _distributions(optuna, sweep: Sweep) -> dict:
    d = optuna.distributions
    result = {}
    for raw in sweep.search_space:
        spec = ParameterSpec(**raw)
        if spec.type == "categorical":
            result[spec.path] = d.CategoricalDistribution(spec.choices)
        elif spec.type == "int":
            result[spec.path] = d.IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                                  step=int(spec.step or 1))
        else:
            result[spec.path] = d.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return result


def _start_trial(session, optuna, study, sweep: Sweep, number: int, store) -> SweepTrial:
    """Ask for trial ``number`` (the caller's fixed values first, if any) and create its job."""
    study.sampler = _sampler(optuna, sweep, number)
    if number < len(sweep.initial_trials):
        study.enqueue_trial(sweep.initial_trials[number])
    asked = study.ask(_distributions(optuna, sweep))
    params = dict(asked.params)
    fields = apply(sweep.config, params)
    epochs = fields.get("hyperparameters", {}).get("n_epochs")
    tokens = sweep.tokens_per_epoch * epochs if sweep.tokens_per_epoch and isinstance(epochs, int) else None
    job = job_service.create_job(session, sweep.project_id, store, fields, training_file=sweep.training_file,
                                 validation_file=sweep.validation_file, estimated_tokens=tokens,
                                 metadata={"sweep_id": sweep.id, "sweep_trial": str(number)})
    trial = SweepTrial(sweep_id=sweep.id, number=number, job_id=job.id, params=params, state="running",
                       intermediate={})
    session.add(trial)
    session.flush()
    return trial


def _finish(sweep: Sweep, trials: list[SweepTrial], jobs: dict[str, Job]) -> None:
    sweep.finished_at = now()
    complete = [t for t in trials if t.state == "complete"]
    if not complete:
        counts = {state: sum(t.state == state for t in trials) for state in ("pruned", "failed", "cancelled")}
        sweep.status = "failed"
        sweep.error = {"code": "no_trial_completed", "param": None, "message": "no trial completed (" + ", ".join(
            f"{n} {state}" for state, n in counts.items() if n) + ")"}
        return
    sign = 1 if Objective(**sweep.objective).direction == "minimize" else -1
    best = min(complete, key=lambda t: (sign * t.value, t.number))
    sweep.status, sweep.best_trial = "succeeded", best.number
    sweep.fine_tuned_model = jobs[best.job_id].fine_tuned_model if best.job_id in jobs else None
