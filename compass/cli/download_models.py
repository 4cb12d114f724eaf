"""``compass download-models``: fetch Layer 1's weights when online; offline, report what is present.

The logic (where weights are looked for, what a complete checkpoint holds) is
``layers.classifier.download``; this module is only the command and its table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from layers.classifier.download import (
    KNOWN_MODELS,
    NVIDIA_REPO,
    ROUTELLM_REPO,
    _local_target,
    download,
    inspect_model,
)


def _print_table(rows: list[dict[str, Any]], notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Layer 1 model weights")
    for column in ("model", "repository", "status", "location", "missing"):
        table.add_column(column, overflow="fold")
    for row in rows:
        status = "[green]ok[/green]" if row["ok"] else "[red]MISSING[/red]"
        if row.get("downloaded"):
            status += " (downloaded)"
        table.add_row(
            row["model"], row["repo"], status, row["location"] or "-", ", ".join(row["missing"]) or "-"
        )
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note)


@click.command("download-models")
@click.option("--nvidia/--no-nvidia", default=True, show_default=True, help=f"{NVIDIA_REPO}")
@click.option("--routellm/--no-routellm", default=True, show_default=True, help=f"{ROUTELLM_REPO}")
@click.option(
    "--dir",
    "target_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Put each repository in DIR/<owner>--<name> (then set the backend's `path`), not the HF cache.",
)
@click.option(
    "--cache-dir", type=click.Path(file_okay=False), default=None, help="Hugging Face cache to use."
)
@click.option("--check", is_flag=True, help="Only report what is present; never use the network.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def download_models_command(
    nvidia: bool, routellm: bool, target_dir: str | None, cache_dir: str | None, check: bool, as_json: bool
) -> None:
    """Fetch Layer 1's weights when online; offline (or --check), report what is present."""
    specs = [KNOWN_MODELS[k] for k, wanted in (("nvidia", nvidia), ("routellm", routellm)) if wanted]
    base = Path(target_dir).expanduser() if target_dir else None
    notes: list[str] = []
    downloaded: set[str] = set()
    if not check:
        for spec in specs:
            local = _local_target(base, spec.repo_id) if base is not None else None
            try:
                download(spec.repo_id, cache_dir=cache_dir, local_dir=local)
                downloaded.add(spec.key)
            except Exception as exc:  # offline, unknown repo, disk full: report and carry on
                message = " ".join(str(exc).split())[:160]
                notes.append(f"{spec.repo_id}: download failed ({type(exc).__name__}: {message})")
        if specs and not downloaded:
            notes.append("nothing was downloaded (offline or Hub unreachable); the table shows what is here")
    rows = [inspect_model(spec, base, cache_dir) | {"downloaded": spec.key in downloaded} for spec in specs]
    if base is not None and any(r["ok"] for r in rows):
        notes.append("set the backend's `path` option (classifier.options.path) to the location shown")
    if as_json:
        click.echo(json.dumps({"models": rows, "notes": notes, "checked_only": check}, indent=2))
    else:
        _print_table(rows, notes)
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)
