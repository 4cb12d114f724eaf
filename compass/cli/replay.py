"""``compass replay``: offline evaluation of Layer 2 on routing-outcome data sets, or IPS on the logs.

    compass replay --data routerbench,split2,routellm --out docs/replay
    compass replay --data bundle --json                 # the small subset shipped in the repo
    compass replay --history ~/.compass --json          # IPS / SNIPS on the gateway's own logs

Data sets live outside the repo (``--data-dir``, ``$COMPASS_SHARED_DATA`` or ``../shared/data``).
Everything learned offline comes from train splits only; the output says so.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

DATA_HELP = "routerbench, split2, routellm, all, bundle (shipped subset) or a bundle file; comma-separated"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from exc


def _clean(value: Any) -> Any:
    """JSON without NaN (null instead), numpy scalars as numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        return _clean(value.item())
    return value


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A ``(stage, done, total)`` callback drawing rich progress bars on stderr (a no-op if disabled)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda stage, done, total: None
        return
    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total)
            progress.update(bars[stage], completed=done, total=total)

        yield update


def _datasets(text: str) -> list[str]:
    from compass.replay.data import DATASETS

    names = [n.strip() for n in text.split(",") if n.strip()]
    return [d for n in names for d in (DATASETS if n == "all" else (n,))]


@click.command("replay")
@click.option("--data", "data", default="routerbench", show_default=True, help=DATA_HELP)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="COMPASS_SHARED_DATA",
    help="Folder of the shared data sets (default ../shared/data next to the repo).",
)
@click.option("--seeds", default="0,1,2", show_default=True, help="Stream orders to average over.")
@click.option("--cost-weights", default=None, help="Cost weights of the frontier sweep (comma-separated).")
@click.option(
    "--cost-weight",
    "report_weight",
    type=float,
    default=0.3,
    show_default=True,
    help="Cost weight of the headline table and the regret plot.",
)
@click.option(
    "--classifier",
    default="embedding",
    show_default=True,
    help="Layer 1 backend for the tiers (falls back to 'length' if it cannot run).",
)
@click.option("--limit", type=int, default=None, help="Replay a seeded subset of this many test prompts.")
@click.option("--policies", default="", help="Comma-separated subset of policies (default: all).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write replay_<data>.json/.md and PNG plots here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option(
    "--history",
    default=None,
    is_flag=False,
    flag_value="",
    help="IPS/SNIPS on the gateway's logs: a .duckdb file or a COMPASS_HOME (alone: this config's).",
)
@click.option("--candidate", default="thompson", show_default=True, help="--history: selector to evaluate.")
@click.option("--candidate-options", default="{}", help="--history: the candidate's options as JSON.")
@click.option(
    "--no-learn", is_flag=True, help="--history: freeze the candidate (no folding of logged rewards)."
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="COMPASS_CONFIG",
    help="--history: compass.yaml for the pool's prices and tiers and the default database.",
)
def replay_command(
    data: str,
    data_dir: str | None,
    seeds: str,
    cost_weights: str | None,
    report_weight: float,
    classifier: str,
    limit: int | None,
    policies: str,
    out_dir: str | None,
    as_json: bool,
    history: str | None,
    candidate: str,
    candidate_options: str,
    no_learn: bool,
    config: str | None,
) -> None:
    """Replay test splits through Layer 2 and the baselines (bandit feedback), or evaluate on the logs."""
    if history is not None:
        _history(history, candidate, candidate_options, not no_learn, config, as_json)
        return
    from compass.replay.report import (
        DEFAULT_SWEEP,
        ReplayOptions,
        evaluate,
        jsonable,
        markdown,
        write_outputs,
    )

    results = []
    with progress_bars(True) as progress:
        for name in _datasets(data):
            opts = ReplayOptions(
                dataset=name,
                data_dir=data_dir,
                seeds=tuple(int(s) for s in seeds.split(",") if s.strip()),
                cost_weights=_floats(cost_weights) if cost_weights else DEFAULT_SWEEP,
                report_cost_weight=report_weight,
                classifier=classifier,
                limit=limit,
                policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
            )
            try:
                result = evaluate(
                    opts, lambda stage, done, total, n=name: progress(f"{n}: {stage}", done, total)
                )
            except (FileNotFoundError, ValueError) as exc:
                raise click.ClickException(str(exc)) from exc
            if out_dir:
                for path in write_outputs(result, Path(out_dir)):
                    click.echo(f"wrote {path}", err=True)
            results.append(result)
    if as_json:
        payload = [_clean(jsonable(r)) for r in results]
        click.echo(json.dumps(payload[0] if len(payload) == 1 else {"datasets": payload}, indent=1))
        return
    for result in results:
        click.echo(markdown(result))


def _history(
    path: str, candidate: str, options_json: str, learn: bool, config: str | None, as_json: bool
) -> None:
    from compass.replay.history import evaluate_history

    pool = None
    try:
        from compass.config import load_settings

        settings = load_settings(config)
        pool = list(settings.models) or None
        path = path or settings.storage.url or str(settings.database_path)
    except Exception as exc:  # no usable config: the pool comes from the log itself
        if not path:
            raise click.ClickException(f"no database given and no usable configuration: {exc}") from exc
    try:
        options = json.loads(options_json)
    except ValueError as exc:
        raise click.BadParameter(f"--candidate-options must be JSON: {exc}") from exc
    try:
        result = evaluate_history(path, pool, candidate, options, learn=learn)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(_clean(result), indent=1))
        return
    click.echo(f"{result['read']}")
    click.echo(
        f"routed requests with a propensity: {result['routed_requests']}; used: {result['n']}; "
        f"skipped: {result['skipped']}"
    )
    click.echo(f"logged policy value (mean reward): {result['logged_policy_value']:.4f}")
    click.echo(
        f"candidate {candidate} {options}: IPS {result['ips']:.4f} ± {result['ips_se']:.4f} (1 s.e.), "
        f"SNIPS {result['snips']:.4f}, effective sample size {result['effective_sample_size']:.1f}, "
        f"max weight {result['max_weight']:.2f}"
    )
    for note in result["notes"]:
        click.echo(f"- {note}")
    sys.stdout.flush()
