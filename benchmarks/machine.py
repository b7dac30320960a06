"""How busy the machine is while a benchmark times something, for any framework (no JAX import).

The benchmarks run on machines shared with other jobs: every timing records the share of the
machine's cores that other processes kept busy meanwhile, and can wait for them to go idle first.
"""
import os
import time


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all processes, all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def wait_for_quiet(max_s: float, threshold: float = 0.1, window_s: float = 5.0) -> float:
    """Waits (at most `max_s`) until other processes use under `threshold` of the machine over a
    `window_s` window; returns the seconds waited. On a shared machine this keeps the timings
    from measuring somebody else's job."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        busy0, w0 = busy_cpu_s(), time.perf_counter()
        time.sleep(window_s)
        if (busy_cpu_s() - busy0) / ((time.perf_counter() - w0) * os.cpu_count()) < threshold:
            break
    return round(time.perf_counter() - t0, 1)


def time_calls(fn, n: int, sync) -> tuple[list[float], float]:
    """Wall seconds of each of `n` calls of `fn` (each finished by `sync(fn())`, which waits for
    asynchronous work), and the share of the machine's cores that other processes kept busy
    meanwhile (0: the measurement had the machine to itself)."""
    busy0, own0, wall0 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - wall0
    others = max(0.0, (busy_cpu_s() - busy0) - (own_cpu_s() - own0)) / (wall * os.cpu_count())
    return times, others


def scheduling() -> dict:
    """This process's CPU priority: on a shared machine a benchmark may be run niced up (and in its
    own autogroup) so that the timings are of this code, not of the neighbours."""
    out = {"nice": os.nice(0)}
    try:
        with open("/proc/self/autogroup") as f:
            out["autogroup"] = f.read().strip()
    except OSError:
        pass
    return out
