"""Where a benchmark's CPU goes: per-process CPU seconds from ``/proc``, and who holds which socket.

``snapshot``/``delta`` sum utime + stime per process (one that exits in between is lost, so the
figures are for long-lived ones: gateway workers, upstreams, PostgreSQL's backends);
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


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of one live process, or of its thread ``tid`` (0 if it is gone)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def snapshot(groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """CPU seconds of each process per named group, plus ``machine`` (all CPUs' busy time, pid 0)."""
    out = {name: {p: cpu_seconds(p) for p in pids} for name, pids in groups.items()}
    out["machine"] = {0: machine_busy_s()}
    return out


def delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds per group between two snapshots: per process, so one that started in between
    counts whole and one that exited in between drops out instead of making the sum negative."""
    return {
        name: sum(max(0.0, cpu - before.get(name, {}).get(pid, 0.0)) for pid, cpu in procs.items())
        for name, procs in after.items()
    }


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


def autogroup_nice(pid: int | str = "self") -> int | None:
    """The nice value of ``pid``'s scheduler autogroup (``None`` without autogroups)."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def share_priority(pid: int) -> bool:
    """Give ``pid``'s autogroup the same nice as ours; True if it now has it.

    With ``kernel.sched_autogroup_enabled`` every session is its own scheduling group and ``nice``
    only orders processes inside one. ``pg_ctl`` starts PostgreSQL in a session of its own, so
    without this a benchmark run at a raised priority starves the PostgreSQL it measures (its
    history writes then happen after the measured cell instead of in it)."""
    mine, theirs = autogroup_nice(), autogroup_nice(pid)
    if mine is None or theirs is None:
        return mine == theirs
    if mine != theirs:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(mine))
        except OSError:
            return False
    return autogroup_nice(pid) == mine
