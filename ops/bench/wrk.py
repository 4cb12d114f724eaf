"""wrk (Debian's ``wrk``, C + LuaJIT) as a load client that costs little CPU per request.

The aiohttp client in ``ops.bench.common`` spends about as much CPU per request as the gateway
does; on a machine whose cores the client shares with the gateway that caps what a second worker
can show. wrk posts the same bodies (``Question i: what is i plus i?``, ``i`` unique per request
across threads), keeps ``connections`` keep-alive connections open, and its ``done`` hook prints
one ``WRK_JSON {...}`` line that ``parse`` reads. ``run`` also returns the CPU seconds wrk itself
used (``os.wait4``), so a benchmark can say where the machine's CPU went.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local n = 0
threads_started = 0
function setup(thread)
  thread:set("thread_index", threads_started)
  threads_started = threads_started + 1
end
function request()
  n = n + 1
  local i = {offset} + (thread_index or 0) * 100000000 + n
  return wrk.format(nil, nil, nil, string.format({body}, i, i, i))
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""

BODY = '{"model":"%s","messages":[{"role":"user","content":"Question %%d: what is %%d plus %%d?"}]}'


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def script(model: str, bearer: str | None = None, offset: int = 0) -> str:
    """The Lua script: POST chat bodies for ``model``, unique ``i`` from ``offset`` on."""
    auth = f'wrk.headers["Authorization"] = {lua_string("Bearer " + bearer)}' if bearer else ""
    return SCRIPT.format(auth=auth, offset=int(offset), body=lua_string(BODY % model))


def parse(output: str) -> dict[str, float]:
    """The ``WRK_JSON`` line of wrk's output as figures: ok requests, errors, req/s, latency in ms."""
    line = next((x for x in output.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise ValueError(f"no WRK_JSON line in wrk's output:\n{output[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    ok = raw["requests"] - raw["status_errors"]
    seconds = raw["duration_us"] / 1e6
    return {
        "n": ok,
        "errors": errors + raw["status_errors"],
        "rps": ok / seconds if seconds > 0 else float("nan"),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "seconds": seconds,
    }


def run(
    url: str,
    model: str,
    seconds: float,
    connections: int,
    threads: int = 1,
    bearer: str | None = None,
    offset: int = 0,
) -> dict[str, Any]:
    """wrk for ``seconds`` against ``url`` (loopback only); figures plus ``cpu_s`` wrk used."""
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError("benchmarks only send traffic to loopback addresses")
    binary = wrk_binary()
    if binary is None:
        raise FileNotFoundError("wrk is not installed (Debian: apt-get install -y wrk)")
    with tempfile.TemporaryDirectory(prefix="compass-wrk-") as scratch:
        lua = Path(scratch) / "post.lua"
        lua.write_text(script(model, bearer, offset), encoding="utf-8")
        out = Path(scratch) / "out.txt"
        with open(out, "wb") as sink:
            argv = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s"]
            argv += ["--timeout", "30s", "-s", str(lua), url]
            process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        text = out.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{text[-2000:]}")
    return {**parse(text), "cpu_s": usage.ru_utime + usage.ru_stime}
