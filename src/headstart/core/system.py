"""The CPUs this process may use, and how many threads to give work on them.

Every thread count in headstart comes from here: a container or ``taskset`` may allow fewer CPUs
than the machine has, so ``os.cpu_count()`` is never used directly.
"""

from __future__ import annotations

import os
import time

import psutil


def usable_cpus() -> list[int] | None:
    """The CPUs this process may run on; None where the OS does not say."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_core_count() -> int:
    """How many CPUs this process may run on (at least 1)."""
    cpus = usable_cpus()
    return len(cpus) if cpus else max(1, os.cpu_count() or 1)


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds since boot over this process's usable CPUs; None if unknown."""
    try:
        per_cpu = psutil.cpu_times(percpu=True)
    except (OSError, RuntimeError, NotImplementedError):
        return None
    cpus = usable_cpus()
    chosen = [per_cpu[i] for i in cpus if i < len(per_cpu)] if cpus else per_cpu
    busy = total = 0.0
    for t in chosen:
        all_time = sum(t)
        # guest time is already counted in user time on Linux: leave it out of the total
        all_time -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        idle = t.idle + getattr(t, "iowait", 0.0)
        busy += all_time - idle
        total += all_time
    return (busy, total) if total > 0 else None


def busy_cores(sample_s: float = 0.5) -> float | None:
    """How many usable cores other programs keep busy now, sampled over ``sample_s`` while this
    process waits (its own CPU time is left out); None where the counters are unavailable."""
    first = cpu_times()
    if first is None:
        return None
    own = time.process_time()
    time.sleep(sample_s)
    second = cpu_times()
    own = time.process_time() - own
    if second is None or second[1] <= first[1]:
        return None
    wall = (second[1] - first[1]) / usable_core_count()  # seconds per core in the window
    return max(0.0, (second[0] - first[0]) / wall - own / max(sample_s, 1e-9))


def compute_threads(threads: int | None = None) -> int:
    """Threads for compute-bound work (training): ``threads`` if given, else the usable cores
    that other programs do not keep busy now.

    Rule: never more threads than free cores; an oversubscribed core makes every small op wait
    at a barrier for a descheduled thread. Counters are sampled, not the load average, because
    that average still counts this process's own work of the last minute.
    """
    if threads:
        return max(1, int(threads))
    cores = usable_core_count()
    busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return max(1, min(cores, cores - int(round(busy))))


def cpu_summary() -> str:
    """The CPU's model name and the instruction sets that decide inference speed, for printing
    next to every speed figure (figures from machines of different kinds are not comparable)."""
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    isa = ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx reported"
    return f"{name}; {usable_core_count()} usable cores; {isa}"
