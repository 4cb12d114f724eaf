"""Where a benchmark's CPU goes: per-process CPU seconds from ``/proc``, and who holds which socket.

``cpu_seconds(pids)`` sums utime + stime of live processes (a process that exits in between is
lost, so measure long-lived ones: gateway workers, upstreams, PostgreSQL's persistent backends);
``machine_busy_s()`` is every CPU's non-idle time from ``/proc/stat``, so ``machine - attributed``
is what nobody in the benchmark used (other jobs, interrupts); ``connections_per_pid`` counts the
established TCP connections to a local port that each process holds, i.e. how a shared listening
socket spread a client's keep-alive connections over workers. Linux only.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per named group of processes, plus ``machine`` (all CPUs' busy time)."""
    out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
    out["machine"] = machine_busy_s()
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def machine_busy_s() -> float:
    """Non-idle time of all CPUs (user, nice, system, irq, softirq, steal), in seconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def established_inodes(port: int) -> set[int]:
    """Socket inodes of established TCP connections whose local port is ``port``."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(parts[9]))
    return inodes


def connections_per_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many established connections to local ``port`` each of ``pids`` holds."""
    wanted = established_inodes(port)
    counts = {}
    for pid in pids:
        n = 0
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:[") and int(target[8:-1]) in wanted:
                    n += 1
        except OSError:
            pass
        counts[pid] = n
    return counts
