"""The classification recipe with the defaults, scored on rows disjoint from training, on three data sets.

Trains the embedded default as a classifier the way a new user would (``tempering tune train.csv --task
classification``: no hyperparameter given, the job's own validation split picks the kept epoch) on a few
examples per class, then scores the fine-tuned model through the serving path (``tempering classify``) on
other rows of the same file that neither training nor selection saw. One knob is varied, so two runs with the
same seed compare one recipe change: ``--head-init`` (auto, labels, random), ``--label-smoothing``,
``--lora-dropout``, ``--adapter``, ``--lr-multiplier``, ``--class-weights`` (with ``--draw natural``: training
rows as the file's classes come, imbalanced, while scoring stays per class). The sets (../shared/data, used here,
never shipped):

- banking77: 77 intents (``category``), banking77/train.csv (CC BY-NC 4.0); labels are words (card_arrival).
- davidson: tweets (``tweet``), class 0/1/2 named by the file's own columns hate_speech, offensive_language,
  neither; safety/davidson_labeled_data.csv (MIT).
- jailbreak: prompts (``prompt``), type jailbreak or benign; safety/jailbreak_classification_balanced.csv (MIT).

Rows are drawn per class (stratified), duplicates removed, training and scoring rows disjoint by text. The
job's automatic evaluation (zero-shot chat answers of the base) is off: it changes no weight, only time.

    python bench/classifier_recipe.py --set banking77 [--per-class 10|0 (all)] [--score-per-class 20]
                                      [--head-init auto|labels|random] [--seed 0] [--max-seq-length N]
                                      [--epochs N] [--batch-size N]   (default: the job's auto rules)
                                      [--label-smoothing X] [--lora-dropout X]   (default: the job's, 0)
                                      [--adapter lora|dora|full] [--lr-multiplier X]   (default: lora, auto)
                                      [--draw stratified|natural] [--class-weights auto|balanced|none]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DAVIDSON = {"0": "hate_speech", "1": "offensive_language", "2": "neither"}
SETS = {  # name: (file, text column, label column, label of a row)
    "banking77": ("banking77/train.csv", "text", "category", lambda row: row["category"]),
    "davidson": ("safety/davidson_labeled_data.csv", "tweet", "class", lambda row: DAVIDSON.get(row["class"])),
    "jailbreak": ("safety/jailbreak_classification_balanced.csv", "prompt", "type", lambda row: row["type"]),
}


def pick(name: str, per_class: int, score_per_class: int, seed: int, natural: bool = False):
    """``per_class`` training rows and ``score_per_class`` scoring rows of each class, disjoint by text;
    ``per_class`` 0: every row not scored trains (the full training set). ``natural``: as many training rows in
    all (``per_class`` x classes) drawn from the rows not scored as they come, so the classes keep the file's
    imbalance; scoring stays ``score_per_class`` of each class."""
    file, text_column, _, label_of = SETS[name]
    by_label: dict[str, set[str]] = defaultdict(set)
    with (DATA / file).open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            text, label = (row.get(text_column) or "").strip(), label_of(row)
            if text and label:  # a few lines of the BANKING77 file are damaged
                by_label[label].add(text)
    seen_twice = {t for t in set().union(*by_label.values()) if sum(t in s for s in by_label.values()) > 1}
    rng = random.Random(seed)  # noqa: S311 - a seeded sample, not a secret
    train, score, rest = [], [], []
    for label in sorted(by_label):
        texts = sorted(by_label[label] - seen_twice)  # a text under two labels would sit on both sides
        rng.shuffle(texts)
        if natural:
            score += [(t, label) for t in texts[:score_per_class]]
            rest += [(t, label) for t in texts[score_per_class:]]
        elif per_class > 0:
            train += [(t, label) for t in texts[:per_class]]
            score += [(t, label) for t in texts[per_class : per_class + score_per_class]]
        else:  # every row: the scored ones first, the rest trains
            score += [(t, label) for t in texts[:score_per_class]]
            train += [(t, label) for t in texts[score_per_class:]]
    if natural:
        rng.shuffle(rest)
        train = rest[: per_class * len(by_label)]
    return train, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(SETS), default="banking77")
    parser.add_argument("--per-class", type=int, default=10, help="training rows per class; 0: all not scored")
    parser.add_argument("--score-per-class", type=int, default=20)
    parser.add_argument("--head-init", choices=["auto", "labels", "random"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="n_epochs; default: the job's auto rule")
    parser.add_argument("--batch-size", type=int, default=None, help="batch_size; default: the job's auto rule")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="Cut texts at this many tokens (training and scoring); default: the model's context.")
    parser.add_argument("--label-smoothing", type=float, default=None, help="label_smoothing; default: the job's")
    parser.add_argument("--lora-dropout", type=float, default=None, help="lora.dropout; default: the job's")
    parser.add_argument("--adapter", choices=["lora", "dora", "full"], default="lora")
    parser.add_argument("--draw", choices=["stratified", "natural"], default="stratified",
                        help="training rows: per-class equal (stratified), or as the file's classes come (natural)")
    parser.add_argument("--class-weights", choices=["auto", "balanced", "none"], default="auto")
    parser.add_argument("--lr-multiplier", type=float, default=None,
                        help="learning_rate_multiplier; default: the job's auto rule")
    args = parser.parse_args()
    file = DATA / SETS[args.set][0]
    if not file.exists():
        raise SystemExit(f"{file} not found: this benchmark needs the shared data")

    from tempering.cli.common import quiet_libraries
    from tempering.serve.classify import load_classifier_model
    from tempering.train import TuneConfig, tune
    from tempering.train.classify import classification_metrics

    quiet_libraries()
    train, score = pick(args.set, args.per_class, args.score_per_class, args.seed, args.draw == "natural")
    path = Path(tempfile.mkdtemp(prefix=f"{args.set}-")) / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("text", "label"), *train])
    events: list[dict] = []

    def on_event(event: dict) -> None:
        if event["type"] != "metrics":
            events.append(event)
            print(event["message"], flush=True)

    config = TuneConfig(task="classification", training_file=path, seed=args.seed, suffix=args.set,
                        head_init=args.head_init, class_weights=args.class_weights, evaluate=False,
                        adapter=args.adapter, max_seq_length=args.max_seq_length,
                        hyperparameters={k: v for k, v in (("n_epochs", args.epochs), ("batch_size", args.batch_size),
                                                                     ("learning_rate_multiplier", args.lr_multiplier))
                                         if v is not None},
                        **{k: v for k, v in (("label_smoothing", args.label_smoothing),
                                             ("lora", None if args.lora_dropout is None else {"dropout": args.lora_dropout}))
                           if v is not None})
    result = tune(config, on_event=on_event)
    started = time.perf_counter()
    classifier = load_classifier_model(result.model_id)
    if args.max_seq_length:
        classifier.max_length = args.max_seq_length
    labels = classifier.labels
    predicted = [p["label"] for p in classifier.classify([t for t, _ in score])]
    report = classification_metrics([labels.index(label) for _, label in score],
                                    [labels.index(label) for label in predicted], dict(enumerate(labels)))
    head = next((e["data"] for e in events if e["type"] == "head_init"), None)
    weighing = next((e["data"] for e in events if e["type"] == "class_weights"), None)
    print(json.dumps({
        "set": args.set, "seed": args.seed, "head_init": args.head_init, "head": head,
        "label_smoothing": config.label_smoothing, "lora_dropout": config.lora.dropout, "adapter": config.adapter,
        "draw": args.draw, "class_weights": weighing and {k: weighing[k] for k in ("class_weights", "reason")},
        "train_classes": dict(sorted(Counter(label for _, label in train).items())),
        "train_rows": result.n_train_examples, "validation_rows": result.n_valid_examples,
        "score_rows": len(score), "classes": len(labels), "hyperparameters": result.hyperparameters.model_dump(),
        "kept": (result.selection or {}).get("reason"), "train_seconds": result.seconds,
        "score_seconds": round(time.perf_counter() - started, 1),
        "validation": {k: (result.classification or {}).get(k) for k in ("accuracy", "macro_f1")},
        "scored": {"accuracy": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
                   **({"per_class_f1": {k: round(v, 4) for k, v in report["per_class_f1"].items()}}
                      if len(labels) <= 10 else {})},
        "model_id": result.model_id}, indent=2))


if __name__ == "__main__":
    main()
