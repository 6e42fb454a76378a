"""``tempering calibrate``: measure this machine's training speed for a model, once, for estimates."""

from __future__ import annotations

from typing import Annotated

import typer

from tempering.catalog import DEFAULT_MODEL_ID
from tempering.cli.common import err, out, print_json, quiet_libraries


def calibrate(
    model: Annotated[str, typer.Option(help="Catalog id of the base model to time.")] = DEFAULT_MODEL_ID,
    device: Annotated[str, typer.Option(help="Where to train: auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the measurement as JSON.")] = False,
) -> None:
    """Time a short real fine-tuning run on synthetic data; store tokens/s for time estimates."""
    from tempering.train.estimate import calibrate as run_calibration

    quiet_libraries()
    err.print(f"[dim]Timing a short fine-tuning run of {model} on synthetic chat data…[/]")
    result = run_calibration(model, device=device)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    out.print(
        f"{result.model} on {result.device} ({result.dtype}): {result.tokens_per_second:,.0f} trained "
        f"tokens/s, plus {result.overhead_seconds:.1f} s per run to load and save "
        f"({result.trained_tokens:,} tokens in {result.fit_seconds:.1f} s); saved for estimates"
    )
