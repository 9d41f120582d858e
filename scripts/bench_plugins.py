"""scripts/bench suite `plugins`: what the plugin ABI costs.

One gateway daemon with three 1 GiB exports, each prefilled like the serve suite's:
  builtin         the built-in `memory` backend
  plugin          the same memory backend built as a plugin (libgw_memory.so, `type = "plugin"`)
  fault-passthru  built-in memory under the `fault` filter plugin (libgw_fault.so) with an
                  empty config, which passes every call through
Workloads (same fio settings as the serve suite): 4k randread QD32, 4k randwrite QD32,
1M seqwrite QD8, interleaved builtin, plugin, fault-passthru round after round.
Ratios: plugin / builtin and fault-passthru / builtin (median IOPS); goal >= 0.95x.
"""

import time

from bench_common import (FIO, Gateway, log, prefill, print_noise, print_ratio_table,
                          ratio_rows, run_interleaved)

SIZE = 1 << 30
GOAL = 0.95
NAMES = ["4k randread QD32", "4k randwrite QD32", "1M seqwrite QD8"]
DIRECTION = {"4k randread QD32": "read"}
# (name, fio args, direction, goal: minimum ratio to builtin)
WORKLOADS = [(n, FIO[n], DIRECTION.get(n, "write"), GOAL) for n in NAMES]

BUILTIN, PLUGIN, FAULT = "builtin", "plugin", "fault-passthru"
EXPORT = {BUILTIN: "builtin", PLUGIN: "plugin", FAULT: "faulted"}
TARGETS = [BUILTIN, PLUGIN, FAULT]
PLUGINS = ["memory", "fault"]  # libgw_NAME.so next to the gateway binary

CONFIG = f"""[[export]]
name = "builtin"
size = "{SIZE >> 30}GiB"
[export.backend]
type = "memory"

[[export]]
name = "plugin"
[export.backend]
type = "plugin"
plugin = "memory"
config = {{ size = "{SIZE >> 30}GiB" }}

[[export]]
name = "faulted"
size = "{SIZE >> 30}GiB"
[export.backend]
type = "memory"
[[export.filter]]
plugin = "fault"
"""


def workloads(substrings):
    return [w for w in WORKLOADS if not substrings or any(s in w[0] for s in substrings)]


def run(gateway, tmp, wls, rounds, runtime, ramp):
    """Run the suite, print its section; return its part of the JSON."""
    started = time.monotonic()
    print()
    print("## suite plugins: built-in memory backend vs the memory plugin vs built-in memory "
          "under the fault filter plugin (empty config: pass-through)")
    print(f"# rounds: {rounds}, runtime: {runtime}s + {ramp}s ramp, export size: 1 GiB each, "
          f"one daemon")
    gw = Gateway(gateway, tmp, "gateway-plugins", CONFIG).start()
    uris = {t: gw.uri(EXPORT[t]) for t in TARGETS}
    pids = {t: gw.pid for t in TARGETS}
    for t in TARGETS:
        prefill(t, uris[t], SIZE)
    results = run_interleaved(wls, TARGETS, uris, pids, rounds, runtime, ramp)
    gw.stop()
    rows = ratio_rows(results, wls, TARGETS, BUILTIN)
    print()
    print_ratio_table(rows, BUILTIN)
    elapsed = time.monotonic() - started
    print(f"\n# suite plugins elapsed: {elapsed:.0f}s")
    print_noise(results)
    print("# ratios: target IOPS / builtin IOPS (medians over rounds); all three exports are in"
          " one daemon, so srvCPU is that daemon's")
    log(f"bench: suite plugins done in {elapsed:.0f}s")
    return {"elapsed_s": elapsed, "uris": uris, "goal_min_ratio": GOAL,
            "workloads": [{"name": w[0], "fio_args": w[1], "direction": w[2]} for w in wls],
            "results": rows, "runs": results}
