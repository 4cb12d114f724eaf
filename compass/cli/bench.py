"""``compass bench [NAME] [ARGS...]``: run a benchmark under ``ops/bench`` (or list them).

Each benchmark is a module with a ``main()`` that prints a table and writes JSON under
``ops/bench/results/``; this command finds them by name and runs them in a child process with
the offline environment set, so a benchmark never waits on a download.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import click

BENCH_ROOT = Path(__file__).resolve().parents[2] / "ops" / "bench"


def available() -> dict[str, str]:
    """``{name: first docstring line}`` for every module under ops/bench that defines ``main``."""
    found: dict[str, str] = {}
    if not BENCH_ROOT.is_dir():
        return found
    for path in sorted(BENCH_ROOT.rglob("*.py")):
        if path.name.startswith("_") and path.name != "__main__.py":
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        if not any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            continue
        relative = path.relative_to(BENCH_ROOT).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__main__" else relative.parts
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        found[".".join(parts)] = doc[0] if doc else ""
    return found


@click.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("name", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(name: str | None, args: tuple[str, ...]) -> None:
    """Run the benchmark NAME with ARGS (`compass bench NAME -- --help` for options); no NAME lists them."""
    benches = available()
    if name is None:
        from rich.console import Console
        from rich.table import Table

        table = Table("benchmark", "what it measures", title="compass bench NAME [ARGS]")
        for bench, doc in benches.items():
            table.add_row(bench, doc)
        Console().print(table)
        return
    if name not in benches:
        raise click.UsageError(f"no benchmark {name!r}; known: {', '.join(benches) or 'none'}")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env = {**env, **os.environ}
    command = [sys.executable, "-m", f"ops.bench.{name}", *args]
    sys.exit(subprocess.call(command, cwd=BENCH_ROOT.parents[1], env=env))
