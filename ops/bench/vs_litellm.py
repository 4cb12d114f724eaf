"""LLM Compass versus LiteLLM proxy, side by side in one run, on the same instant fake upstream.

    python -m ops.bench.vs_litellm [--requests 2000] [--concurrency 1 32 128] [--no-stream] [--profile]

Targets (all on loopback, one worker each, started once and measured interleaved per
concurrency level so they share the same minute of a shared machine):

* direct: the fake upstream itself (the baseline; "added" latency is target minus this);
* Compass with Layer 1 excluded (the ``length`` rule) and the cache off, model ``auto``;
* the same with uvloop + httptools importable (what ``uvicorn[standard]`` would give it);
* Compass with Layer 1 on (the configured ``embedding`` classifier; ``/health`` says whether it
  loaded or fell back), cache off;
* LiteLLM proxy (``litellm --config``, same models as ``openai/<name>`` + ``api_base``), no DB.

Both gateways check a bearer key. CPU per request is the gateway process tree's utime+stime
(``/proc/PID/stat``) over the measured requests. LiteLLM lives in its own virtualenv under
``ops/bench/results/`` (gitignored), created on first use. ``--profile`` records Compass with
py-spy under load and prints the hottest functions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from ops.bench.common import RESULTS, load, write_json
from ops.bench.cpu import process_tree
from ops.fake_upstream import instant_config, spawn_fake_upstream
from ops.ports import free_port
from ops.procs import REPO, GatewayProcess

LITELLM_VENV = RESULTS / "litellm-venv"
SPEEDUPS = RESULTS / "uvicorn-speedups"  # uvloop + httptools, installed with --target
TOOLS = RESULTS / "tools"  # py-spy
FRAGMENT = Path(__file__).resolve().parent / "RESULTS_vs_litellm.md"
BENCH_KEY = "sk-bench-5f0c2d9e7a4b4c1e8d3f6a2b9c0e1d4f"  # loopback only; both gateways require it
MODELS = {
    "demo-small": ("simple", 0.1, 0.4),
    "demo-medium": ("medium", 1.0, 4.0),
    "demo-large": ("complex", 10, 40),
}
QUIET_ENV = {"COMPASS_LOG_LEVEL": "warning", "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def log(message: str) -> None:
    print(f"[vs_litellm {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- LiteLLM in its own virtualenv ---------------------------------------------------------------

PROXY_REQS = """
from importlib.metadata import requires
from packaging.requirements import Requirement
for raw in requires("litellm") or []:
    req = Requirement(raw)
    if req.marker and req.marker.evaluate({"extra": "proxy"}) and not req.marker.evaluate({"extra": ""}):
        req.marker = None
        print(req)
"""


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], text=True, capture_output=True
    )


def ensure_litellm_venv(venv: Path, version: str) -> dict[str, Any]:
    """``litellm[proxy]==version``; where the index lacks a pinned proxy package, the rest of the extra."""
    marker = venv / "installed.txt"
    if (venv / "bin" / "litellm").exists() and marker.exists():
        return yaml.safe_load(marker.read_text(encoding="utf-8"))
    log(f"creating {venv} with litellm[proxy]=={version} (one-time, a few minutes)...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    info: dict[str, Any] = {"litellm": version, "how": f"pip install 'litellm[proxy]=={version}'"}
    info["skipped"] = []
    done = pip(venv, f"litellm[proxy]=={version}")
    if done.returncode != 0:
        log("litellm[proxy] did not resolve here; installing litellm and its proxy extra one by one...")
        if pip(venv, f"litellm=={version}", "packaging").returncode != 0:
            raise RuntimeError(f"pip could not install litellm=={version}")
        listed = subprocess.run(
            [str(venv / "bin" / "python"), "-c", PROXY_REQS], text=True, capture_output=True, check=True
        )
        wanted = [line for line in listed.stdout.splitlines() if line.strip()]
        extra: list[str] = []
        for req in wanted:
            name = req.split("=")[0].split(">")[0].split("<")[0].strip()
            if name == "litellm-proxy":  # the proxy's code ships inside litellm; this index lacks it
                info["skipped"].append(req)
            elif name.startswith("litellm-") and "==" in req:
                extra.append(name)  # exact pins of litellm's side packages: take what the index has
                info["skipped"].append(f"{req} (installed unpinned)")
            else:
                extra.append(req)
        failed = pip(venv, *extra)
        if failed.returncode != 0:
            raise RuntimeError(f"pip could not install LiteLLM's proxy extra:\n{failed.stderr[-3000:]}")
        info["how"] = f"pip install litellm=={version} + the [proxy] extra's requirements (see skipped)"
    marker.write_text(yaml.safe_dump(info), encoding="utf-8")
    return info


def ensure_target(directory: Path, *packages: str) -> bool:
    """``pip install --target`` (into a scratch folder, never the project's venv); False if it fails."""
    if directory.exists() and any(directory.iterdir()):
        return True
    log(f"installing {' '.join(packages)} into {directory} ...")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(directory), *packages],
        text=True,
        capture_output=True,
    )
    return done.returncode == 0


class LiteLLMProxy:
    """``litellm --config`` on a free loopback port, one uvicorn worker, no database."""

    def __init__(self, home: Path, api_base: str, workers: int = 1) -> None:
        self.home = home
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "model_list": [
                {
                    "model_name": name,
                    "litellm_params": {"model": f"openai/{name}", "api_base": api_base, "api_key": "k"},
                }
                for name in MODELS
            ],
            "litellm_settings": {"set_verbose": False, "drop_params": True, "request_timeout": 60},
            "general_settings": {"master_key": BENCH_KEY, "disable_spend_logs": True},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 240.0) -> LiteLLMProxy:
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "litellm.yaml"
        path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(QUIET_ENV)
        command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--num_workers", str(self.workers)]
        self._log = open(self.home / "litellm.log", "ab")  # closed in stop()
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.home
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"litellm exited: {(self.home / 'litellm.log').read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("litellm proxy did not come up")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._log.close()
            self.process = None


# -- measuring -----------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of ``pid`` and its descendants (all threads), in seconds."""
    if pid is None:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / ticks


@dataclass
class Target:
    name: str
    url: str
    model: str
    pid: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""


def body(i: int, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
        "max_tokens": 16,
    }


async def measure(target: Target, concurrency: int, requests: int, stream: bool) -> dict[str, float]:
    warm = max(30, concurrency * 2)
    await load(
        target.url, lambda i: body(10_000_000 + i, target.model), concurrency, warm, stream, target.headers
    )
    before = cpu_seconds(target.pid)
    result = await load(
        target.url,
        lambda i: body(i, target.model),
        concurrency,
        requests,
        stream,
        target.headers,
        max_seconds=180,
    )
    used = cpu_seconds(target.pid) - before
    result["cpu_ms_per_request"] = 1000 * used / max(1, result["n"]) if target.pid else float("nan")
    return result


def compass_config(pool: list[dict[str, Any]], classifier: str) -> dict[str, Any]:
    return {
        "models": pool,
        "classifier": {"backend": classifier},
        "cache": {"enabled": False},
        "security": {"admin_key": BENCH_KEY},
        "storage": {"flush_interval_ms": 20},
    }


def classifier_state(url: str) -> str:
    layer = httpx.get(f"{url}/health", timeout=10).json()["layers"]["classifier"]
    backend, configured = layer.get("backend"), layer.get("configured")
    return f"classifier {backend}" if backend == configured else f"FELL BACK: {configured} -> {backend}"


def start_targets(scratch: Path, fake_url: str, speedups: bool, running: list[Any]) -> list[Target]:
    """Every gateway, started once (appended to ``running`` so the caller stops them)."""
    pool = [pool_entry(name, fake_url) for name in MODELS]
    auth = {"Authorization": f"Bearer {BENCH_KEY}"}
    targets = [Target("direct (fake upstream)", f"{fake_url}/chat/completions", "demo-small")]
    variants = [("Compass, layer 1 off", "length", {}), ("Compass, layer 1 on", "embedding", {})]
    if speedups:
        path = os.pathsep.join(filter(None, [str(SPEEDUPS), os.environ.get("PYTHONPATH")]))
        variants.insert(1, ("Compass, layer 1 off, uvloop+httptools", "length", {"PYTHONPATH": path}))
    for name, classifier, env in variants:
        log(f"starting {name} ...")
        home = scratch / name.replace(" ", "_").replace(",", "")
        gateway = GatewayProcess(home, compass_config(pool, classifier), env={**QUIET_ENV, **env})
        running.append(gateway.start(timeout_s=240))
        pid = gateway.process.pid if gateway.process else None
        url, state = f"{gateway.url}/v1/chat/completions", classifier_state(gateway.url)
        targets.append(Target(name, url, "auto", pid, auth, state))
    log("starting LiteLLM proxy ...")
    proxy = LiteLLMProxy(scratch / "litellm", fake_url)
    running.append(proxy.start())
    pid = proxy.process.pid if proxy.process else None
    note = f"litellm {importlib.metadata.version('litellm')}, uvloop, h11"
    targets.append(Target("LiteLLM proxy", f"{proxy.url}/v1/chat/completions", "demo-small", pid, auth, note))
    return targets


def pool_entry(name: str, api_base: str) -> dict[str, Any]:
    tier, p_in, p_out = MODELS[name]
    entry = {"name": name, "litellm_model": f"openai/{name}", "api_base": api_base, "api_key": "k"}
    return {**entry, "tier": tier, "input_price_per_mtok": p_in, "output_price_per_mtok": p_out}


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    venv_info = ensure_litellm_venv(LITELLM_VENV, importlib.metadata.version("litellm"))
    speedups = ensure_target(SPEEDUPS, "uvloop", "httptools")
    fake = spawn_fake_upstream(instant_config(*MODELS), port=0)
    running: list[Any] = []
    results: list[dict[str, Any]] = []
    try:
        targets = start_targets(scratch, fake.url, speedups, running)
        for concurrency in args.concurrency:
            n = args.requests if concurrency > 1 else max(100, args.requests // 8)
            for stream in [False, True] if args.stream else [False]:
                for target in targets:  # interleaved: every target within the same minute
                    log(f"c={concurrency} stream={stream} {target.name}: {n} requests")
                    cell = asyncio.run(measure(target, concurrency, n, stream))
                    meta = {"target": target.name, "note": target.note, "concurrency": concurrency}
                    results.append({**meta, "stream": stream, **cell})
        profiled = [t for t in targets if t.name in ("Compass, layer 1 off", "Compass, layer 1 on")]
        hot = [profile_compass(t, args.profile_seconds) for t in profiled] if args.profile else []
    finally:
        for process in reversed(running):
            process.stop()
        fake.terminate()
    return {"litellm_venv": venv_info, "speedups": speedups, "results": results, "profile": hot}


# -- profiling -----------------------------------------------------------------------------------


def profile_compass(target: Target, seconds: float) -> dict[str, Any] | None:
    """py-spy (from ``ops/bench/results/tools``) on a gateway under load at c=32: where its CPU goes."""
    if not ensure_target(TOOLS, "py-spy") or target.pid is None:
        log("py-spy unavailable: no profile")
        return None
    out = RESULTS / f"vs_litellm_profile_{target.name.replace(' ', '_').replace(',', '')}.txt"
    command = [str(TOOLS / "bin" / "py-spy"), "record", "-p", str(target.pid), "-d", str(int(seconds))]
    command += ["-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"]
    log(f"profiling {target.name} for {seconds:.0f}s ...")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    make = lambda i: body(i, target.model)  # noqa: E731
    asyncio.run(load(target.url, make, 32, 10**6, False, target.headers, max_seconds=seconds))
    spy.wait(timeout=seconds + 60)
    if not out.exists():
        log(f"py-spy wrote nothing: {spy.stderr.read().decode()[-500:] if spy.stderr else ''}")
        return None
    own: collections.Counter[str] = collections.Counter()
    package: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")], int(count)
        total += n
        own[frames[-1]] += n
        where = re.search(r"\(([^/)]+)", frames[-1])
        package[where.group(1).removesuffix(".py") if where else "?"] += n
        for frame in set(frames):
            inclusive[frame] += n
    top = lambda c, k: [(frame, round(100 * n / total, 1)) for frame, n in c.most_common(k)]  # noqa: E731
    return {
        "target": target.name,
        "samples": total,
        "self_pct_by_package": top(package, 15),
        "self_pct": top(own, 25),
        "inclusive_pct": top(inclusive, 40),
        "raw": str(out),
    }


# -- reporting -----------------------------------------------------------------------------------


COLS = "conc|stream|target|p50 ms|p99 ms|added p50|added p99|req/s|CPU ms/req|errors".split("|")
RATIO_COLS = "conc|stream|Compass variant|req/s ratio|p99 ratio|CPU/req ratio|≥2x req/s at ≤1x p99".split("|")


def rows_of(results: list[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    """The cells as table rows, and Compass/LiteLLM ratios per concurrency and stream mode."""
    by_cell: dict[tuple[int, bool], dict[str, Any]] = collections.defaultdict(dict)
    for r in results:
        by_cell[(r["concurrency"], r["stream"])][r["target"]] = r
    rows, ratios = [], []
    for r in results:
        cell = (str(r["concurrency"]), "yes" if r["stream"] else "no")
        same = by_cell[(r["concurrency"], r["stream"])]
        direct = next(v for k, v in same.items() if k.startswith("direct"))
        added = [f"{r[q] - direct[q]:.2f}" for q in ("p50_ms", "p99_ms")]
        cpu = f"{r['cpu_ms_per_request']:.2f}"
        if r is direct:
            added, cpu = ["", ""], ""
        rows.append([*cell, r["target"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", *added])
        rows[-1] += [f"{r['rps']:.0f}", cpu, str(r["errors"])]
        other = same.get("LiteLLM proxy")
        if r["target"].startswith("Compass") and other is not None:
            rps, p99 = r["rps"] / other["rps"], r["p99_ms"] / other["p99_ms"]
            cpu_ratio = r["cpu_ms_per_request"] / other["cpu_ms_per_request"]
            verdict = "yes" if rps >= 2 and p99 <= 1 else "no"
            ratios.append([*cell, r["target"], f"{rps:.2f}x", f"{p99:.2f}x", f"{cpu_ratio:.2f}x", verdict])
    return rows, ratios


def markdown(cols: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def print_rich(title: str, cols: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in cols:
        table.add_column(col, justify="left" if col in ("target", "Compass variant", "stream") else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def write_fragment(
    payload: dict[str, Any], command: str, rows: list[list[str]], ratios: list[list[str]]
) -> None:
    notes = sorted({f"- {r['target']}: {r['note']}" for r in payload["results"] if r["note"]})
    venv = payload["litellm_venv"]
    text = [
        "## Compass versus LiteLLM proxy (`ops/bench/vs_litellm.py`)",
        "",
        f"Run {payload['time']} on {payload['machine']['cpus']} cores; "
        "the 2-core machine was **shared with other agents** during the run, and the load client, the fake "
        "upstream and the gateways all ran on it, so absolute numbers are noisy; the targets were measured "
        "interleaved per concurrency level, so the ratios are the figure to read.",
        "",
        "```bash",
        "source .venv/bin/activate",
        "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True",
        command,
        "```",
        "",
        f"LiteLLM: {venv['how']} in `ops/bench/results/litellm-venv` (gitignored)."
        + (f" Skipped or unpinned: {'; '.join(venv['skipped'])}." if venv.get("skipped") else ""),
        "Both gateways run one uvicorn worker on loopback and check a bearer key; Compass routes",
        "`model: auto`, LiteLLM serves `demo-small` as named. Added latency = target percentile - direct",
        "percentile (same cell).",
        "CPU ms/req = the gateway process tree's utime+stime over the measured requests.",
        "",
        *notes,
        "",
        markdown(COLS, rows),
        "Ratios (Compass / LiteLLM; req/s higher is better, p99 and CPU lower is better):",
        "",
        markdown(RATIO_COLS, ratios),
    ]
    for hot in filter(None, payload.get("profile") or []):
        text += [
            "",
            f"py-spy on {hot['target']} under c=32 ({hot['samples']} samples); self time by package:",
            "",
        ]
        text += ["- " + ", ".join(f"{name} {pct} %" for name, pct in hot["self_pct_by_package"][:10])]
        text += ["", "top functions (self time):", ""]
        text += [f"- {pct} % `{frame}`" for frame, pct in hot["self_pct"][:12]]
    FRAGMENT.write_text("\n".join(text) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per cell (1/8 of it at concurrency 1)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="skip the streaming cells")
    parser.add_argument("--profile", action="store_true", help="py-spy Compass under load afterwards")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with tempfile.TemporaryDirectory(prefix="vs_litellm-") as scratch:
        payload = run(args, Path(scratch))
    path = write_json("vs_litellm", payload)
    payload = json.loads(path.read_text(encoding="utf-8"))  # with the time and machine write_json adds
    rows, ratios = rows_of(payload["results"])
    print_rich("Compass vs LiteLLM proxy (ms; added = minus direct)", COLS, rows)
    print_rich("Compass / LiteLLM", RATIO_COLS, ratios)
    for hot in filter(None, payload.get("profile") or []):
        print(f"\n{hot['target']}: self time by package", hot["self_pct_by_package"][:10])
        for frame, pct in hot["self_pct"][:20]:
            print(f"{pct:5.1f} %  {frame}")
    command = "python -m ops.bench.vs_litellm " + " ".join(sys.argv[1:])
    write_fragment(payload, command.strip(), rows, ratios)
    print("results:", path, "and", FRAGMENT.relative_to(REPO))


if __name__ == "__main__":
    main()
