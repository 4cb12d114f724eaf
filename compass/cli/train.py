"""``compass train``: fit Layer 2's priors (and memory) on a data set's train split or on the
gateway's own rewarded requests.

    compass train --data routerbench --out priors.json --rename gpt-4-1106-preview=gpt-4o
    compass train --data routerbench --memory memory.npz        # + the per-prompt memory
    compass train --history ~/.compass --memory memory.npz      # from your own feedback

then in compass.yaml::

    selector:
      backend: thompson
      options: {priors_path: priors.json}
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from compass.cli.replay import _clean, progress_bars


def _renames(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"--rename takes DATASET_MODEL=POOL_MODEL, got {pair!r}")
        out[old] = new
    return out


@click.command("train")
@click.option(
    "--data",
    "data",
    default="routerbench",
    show_default=True,
    help="routerbench, split2, routellm, bundle, or a bundle file.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="COMPASS_SHARED_DATA",
    help="Folder of the shared data sets (default ../shared/data next to the repo).",
)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="priors.json", show_default=True)
@click.option(
    "--classifier",
    default="embedding",
    show_default=True,
    help="Layer 1 backend that labels the train prompts (use the gateway's).",
)
@click.option(
    "--context",
    type=click.Choice(["tier", "tier_task"]),
    default="tier",
    show_default=True,
    help="The selector's 'context' option the priors are for.",
)
@click.option(
    "--cap",
    type=float,
    default=None,
    help="Count the train rows as at most this many observations per context (default: all).",
)
@click.option("--rename", multiple=True, help="DATASET_MODEL=POOL_MODEL; repeat for each model.")
@click.option(
    "--history",
    default=None,
    is_flag=False,
    flag_value="",
    help="Train on the gateway's own rewarded requests: a .duckdb file, a COMPASS_HOME or a"
    " postgresql:// URL (alone: this configuration's store, storage.url or its DuckDB file).",
)
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="--history: compass.yaml.")
@click.option(
    "--memory",
    "memory_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the neighbourhood selector's memory (.npz) for selector.options.memory_path.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def train_command(
    data: str,
    data_dir: str | None,
    out_path: str,
    classifier: str,
    context: str,
    cap: float | None,
    rename: tuple[str, ...],
    history: str | None,
    config: str | None,
    memory_path: str | None,
    as_json: bool,
) -> None:
    """Fit per (context, model) Beta priors from a TRAIN split and write the selector's priors JSON."""
    from compass.replay.train import train_priors

    if history is not None:
        if not history:  # bare --history: where this configuration keeps its history
            from compass.cli.common import load_or_exit

            settings = load_or_exit(config)
            history = settings.storage.url or str(settings.database_path)
        _train_history(history, out_path, memory_path, cap, as_json)
        return
    try:
        with progress_bars(True) as progress:
            doc = train_priors(data, data_dir, classifier, context, cap, _renames(rename), progress)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    path = _write_priors(out_path, doc)
    summary = {
        "wrote": str(path),
        "contexts": len(doc["contexts"]),
        "models": len(next(iter(doc["contexts"].values()), {})),
        **{k: doc["source"][k] for k in ("dataset", "split", "prompts", "classifier", "context_mode")},
        "rows_per_context": doc["source"]["rows_per_context"],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(
        f"wrote {path}: {summary['contexts']} contexts x {summary['models']} models, fitted on the "
        f"{summary['split']} split of {summary['dataset']} ({summary['prompts']} prompts, "
        f"classifier {summary['classifier']})"
    )
    click.echo(f"use it with selector.options.priors_path: {path}")
    if memory_path:
        from compass.replay.train import train_memory

        with progress_bars(True) as progress:
            memory = train_memory(data, data_dir, _renames(rename), progress)
        _write_memory(memory_path, memory)
        click.echo(
            f"wrote {memory_path}: {len(memory['vectors'])} train prompts x {len(memory['models'])} models "
            f"(held-out k = {int(memory['k'])}); selector.options: "
            f"{{memory_path: {memory_path}, k: {int(memory['k'])}}}"
        )


def _write_priors(out_path: str, doc: dict) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=1), encoding="utf-8")
    return path


def _write_memory(path: str, memory: dict) -> None:
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **memory)


def _train_history(
    history: str, out_path: str, memory_path: str | None, cap: float | None, as_json: bool
) -> None:
    from compass.errors import ConfigError
    from compass.replay.train import train_history

    try:
        memory, priors = train_history(history, cap)
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    path = _write_priors(out_path, priors)
    memory_file = memory_path or str(path.with_suffix(".npz"))
    _write_memory(memory_file, memory)
    summary = {
        "wrote": [str(path), memory_file],
        **{k: priors["source"][k] for k in ("history", "reward_rows", "requests", "memory_rows", "models")},
        "contexts": sorted(priors["contexts"]),
        "selector_options": {"priors_path": str(path), "memory_path": memory_file},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(
        f"wrote {path} ({len(summary['contexts'])} contexts) and {memory_file} ({summary['memory_rows']} "
        f"requests with a vector) from {summary['reward_rows']} reward rows in {summary['history']}"
    )
    click.echo(f"use them with selector.options: {json.dumps(summary['selector_options'])}")
