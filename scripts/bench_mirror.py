"""scripts/bench suite `mirror`: what synchronous mirroring costs, and how fast a resync runs.

Two gateway daemons on loopback, site A (production) and site B, each with its own data
directory and ports. A serves two 512 MiB exports on the `file` backend: `mirrored`, the only
volume of volume set `vs1` (mode sync, mirrored to B's `mirrored`), and `plain`, not in any
set. Both start empty; the suite waits for vs1 to reach InSync (`gateway ctl wait-for-state`:
A's initial full copy to B, timed from B ready, so including A's reconnect back-off of up to
1 s, and reported), then prefills both exports with one
sequential 1 MiB write pass (the mirrored one through the mirror).

Throughput: 4k randwrite QD32 and 1M seqwrite QD8, interleaved mirrored, plain round after
round (same fio settings as the serve suite). Ratio mirrored / plain (median IOPS); goal
>= 0.6x on 4k randwrite QD32 (none on 1M). srvCPU counts both daemons (B works for every
mirrored write; for plain it idles); `B CPU` is B's share. After every mirrored run the set
must still be InSync (else the writes were only tracked, not mirrored, and a warning is shown).

Resync (workload `resync`, once per round): SIGKILL B; wait for A to notice (the set leaves
InSync); write 128 MiB sequentially at A (1 MiB writes at QD1, see resync_round: 2048 dirty
64 KiB regions; the offset moves 128 MiB each round); restart B; poll A's status (the admin socket's
`status`, as `gateway ctl --json status` prints it) every 20 ms until vs1 is InSync again.
Reported: dirty bytes before B's restart; resync bytes (delta of `resync_bytes_sent`);
seconds from B's start to B ready, to the data link up, to InSync; MB/s = resync bytes /
time from B's start to InSync (includes B's start-up and A's reconnect back-off of up to
1 s), and copy MB/s = resync bytes / time from the first poll seeing Resyncing (or the link
up) to InSync.
"""

import os
import statistics
import time

from bench_common import (FIO, Gateway, die, free_ports, log, med, prefill, print_noise,
                          print_ratio_table, ratio_rows, run_fio, run_interleaved)

SIZE = 512 << 20
DIRTY = 128 << 20
DIRTY_QD = 1  # queue depth of the write that makes the dirty set (see resync_round)
SET = "vs1"
POLL = 0.02
# (name, fio args, direction, goal: minimum ratio mirrored / plain)
WORKLOADS = [("4k randwrite QD32", FIO["4k randwrite QD32"], "write", 0.6),
             ("1M seqwrite QD8", FIO["1M seqwrite QD8"], "write", None)]
RESYNC = "resync"
MIRRORED, PLAIN = "mirrored", "plain"
TARGETS = [MIRRORED, PLAIN]
PLUGINS = ["pprc"]  # the default recovery policy, libgw_pprc.so next to the gateway binary


def site_config(site, peer, ports, exports):
    own, other = ports[site], ports[peer]
    text = f"""[node]
site = "{site}"
replication_listen = "127.0.0.1:{own['repl']}"
control_listen = "127.0.0.1:{own['ctl']}"
"""
    for e in exports:
        text += f"""
[[export]]
name = "{e}"
size = "{SIZE >> 20}MiB"
[export.backend]
type = "file"
path = "{e}.img"
"""
    text += f"""
[[volume_set]]
name = "{SET}"
volumes = ["{MIRRORED}"]
production = "A"
peer_site = "{peer}"
peer_replication = "127.0.0.1:{other['repl']}"
peer_control = "127.0.0.1:{other['ctl']}"
"""
    return text


def workloads(substrings):
    """The throughput workloads selected, and whether the resync measurement is."""
    sel = [w for w in WORKLOADS if not substrings or any(s in w[0] for s in substrings)]
    return sel, not substrings or any(s in RESYNC for s in substrings)


def set_status(gw):
    return gw.admin({"command": "status"})["replication"]["volume_sets"][0]


def wait_state(gw, pred, what, timeout):
    deadline = time.monotonic() + timeout
    while True:
        st = set_status(gw)
        if pred(st):
            return st
        if time.monotonic() > deadline:
            die(f"{gw.name}: volume set {SET} not {what} after {timeout}s: {st}")
        time.sleep(POLL)


def resync_round(a, b, rnd, rounds):
    """Kill B, dirty DIRTY bytes at A, restart B, time A's return to InSync."""
    b.kill()
    t = time.monotonic()
    st = wait_state(a, lambda s: s["state"] != "InSync", "out of sync", 30)
    detect = time.monotonic() - t
    sent0, dirty0 = st["resync_bytes_sent"], st["dirty_bytes"]
    offset = (rnd * DIRTY) % SIZE
    # QD1: tracked writes that dirty new regions at once each persist the change bitmap, and
    # concurrent persists fail (EIO to the client: "change bitmap ...: rename: No such file or
    # directory", all using one temporary file) as of this writing.
    job = run_fio(a.uri(MIRRORED), ["--rw=write", "--bs=1M", f"--iodepth={DIRTY_QD}",
                                    f"--size={DIRTY}", f"--offset={offset}"], timeout=600)
    st = set_status(a)
    dirty, state_down = st["dirty_bytes"], st["state"]
    t0 = time.monotonic()
    b.spawn()
    t_ready = t_link = t_copy = None
    rates = []
    while True:
        now = time.monotonic()
        if t_ready is None and b.ready():
            t_ready = now
        st = set_status(a)
        if t_link is None and st["link_up"]:
            t_link = now
        if t_copy is None and st["state"] == "Resyncing":
            t_copy = now
        if st.get("resync") and st["resync"].get("rate_bytes_per_sec"):
            rates.append(st["resync"]["rate_bytes_per_sec"])
        if st["state"] == "InSync":
            t_insync = now
            break
        if now - t0 > 300:
            die(f"{a.name}: volume set {SET} not InSync 300 s after B restarted: {st}")
        time.sleep(POLL)
    b.wait_ready()
    sent = st["resync_bytes_sent"] - sent0
    copy_from = t_copy if t_copy is not None else (t_link if t_link is not None else t0)
    r = {
        "offset": offset, "write_mbps": job["write"]["bw_bytes"] / 1e6,
        "detect_s": detect, "state_while_down": state_down,
        "dirty_bytes_before_kill": dirty0, "dirty_bytes": dirty, "resync_bytes": sent,
        "ready_s": (t_ready if t_ready is not None else t_insync) - t0,
        "link_up_s": (t_link if t_link is not None else t_insync) - t0,
        "copy_start_s": copy_from - t0, "insync_s": t_insync - t0,
        "mbps": sent / (t_insync - t0) / 1e6,
        "copy_mbps": sent / max(t_insync - copy_from, POLL) / 1e6,
        "gateway_rate_mbps": rates[-1] / 1e6 if rates else float("nan"),
        "saw_resyncing": t_copy is not None,
    }
    log(f"bench: resync round {rnd + 1}/{rounds}: dirty {dirty / 2**20:.0f} MiB, sent "
        f"{sent / 2**20:.0f} MiB, B ready {r['ready_s']:.2f}s, link up {r['link_up_s']:.2f}s, "
        f"InSync {r['insync_s']:.2f}s: {r['mbps']:.0f} MB/s from B start, "
        f"{r['copy_mbps']:.0f} MB/s copying")
    return r


def print_resync(runs):
    print()
    print(f"resync after B was killed and {DIRTY >> 20} MiB written at A "
          f"(times from B's restart)")
    hdr = (f"{'round':<6} {'dirty MiB':>9} {'sent MiB':>8} {'B ready s':>9} {'link up s':>9} "
           f"{'InSync s':>8} {'MB/s':>6} {'copy MB/s':>9} {'gw MB/s':>7}")
    print(hdr)
    print("-" * len(hdr))

    def line(label, r):
        print(f"{label:<6} {r['dirty_bytes'] / 2**20:>9.0f} {r['resync_bytes'] / 2**20:>8.0f} "
              f"{r['ready_s']:>9.2f} {r['link_up_s']:>9.2f} {r['insync_s']:>8.2f} "
              f"{r['mbps']:>6.0f} {r['copy_mbps']:>9.0f} {r['gateway_rate_mbps']:>7.0f}")

    for i, r in enumerate(runs):
        line(str(i + 1), r)
    if len(runs) > 1:
        line("median", {k: med(runs, k) for k in runs[0] if isinstance(runs[0][k], (int, float))})
    odd = [i + 1 for i, r in enumerate(runs) if r["dirty_bytes"] != DIRTY]
    if odd:
        print(f"# NOTE: dirty bytes before the restart were not {DIRTY >> 20} MiB in round(s) "
              f"{odd}")
    print(f"# MB/s: resync bytes / time from B's start to InSync (B's start-up and A's 1 s "
          f"reconnect back-off included); copy MB/s: from the first poll seeing Resyncing (or "
          f"the link up; {POLL * 1000:.0f} ms polls) to InSync; gw MB/s: the last rate A "
          f"reported during the resync")


def run(gateway, tmp, wls, resync, rounds, runtime, ramp):
    """Run the suite, print its section; return its part of the JSON."""
    started = time.monotonic()
    print()
    print("## suite mirror: sync-mirrored volume (site A -> site B, both on loopback) vs an "
          "unmirrored volume on site A; resync rate")
    print(f"# rounds: {rounds}, runtime: {runtime}s + {ramp}s ramp, export size: 512 MiB each, "
          f"file backend, region size 64 KiB (default)")
    p = free_ports(6)
    ports = {"A": {"nbd": p[0], "repl": p[1], "ctl": p[2]},
             "B": {"nbd": p[3], "repl": p[4], "ctl": p[5]}}
    a = Gateway(gateway, tmp, "site-A", site_config("A", "B", ports, [MIRRORED, PLAIN]),
                data=os.path.join(tmp, "A"), port=ports["A"]["nbd"])
    b = Gateway(gateway, tmp, "site-B", site_config("B", "A", ports, [MIRRORED]),
                data=os.path.join(tmp, "B"), port=ports["B"]["nbd"])
    a.start()
    b.start()
    t = time.monotonic()
    a.ctl("wait-for-state", SET, "InSync", "--timeout", "120", timeout=150)
    took = time.monotonic() - t
    sent = set_status(a)["resync_bytes_sent"]
    initial = {"bytes": sent, "s": took, "mbps": sent / took / 1e6}
    log(f"bench: {SET} InSync: initial copy of {sent / 2**20:.0f} MiB in {took:.1f}s")

    results, rows, resyncs = {}, [], []
    if wls:
        uris = {t: a.uri(t) for t in TARGETS}
        pids = {t: [a.pid, b.pid] for t in TARGETS}
        for t in TARGETS:
            prefill(t, uris[t], SIZE)
        wait_state(a, lambda s: s["state"] == "InSync", "InSync", 60)
        last = {"updates": set_status(a)["updates_mirrored"]}
        not_insync = []

        def after(target, wl, r):
            r["peer_cpu"] = r["srv_cpu_each"][1]
            st = set_status(a)
            r["set_state_after"] = st["state"]
            r["updates_mirrored"] = st["updates_mirrored"] - last["updates"]
            last["updates"] = st["updates_mirrored"]
            if st["state"] != "InSync":
                not_insync.append((wl[0], target, st["state"]))
                log(f"bench: WARNING: {SET} is {st['state']} after a {target} {wl[0]} run: "
                    f"{st.get('last_error')}")
                wait_state(a, lambda s: s["state"] == "InSync", "InSync", 120)

        results = run_interleaved(wls, TARGETS, uris, pids, rounds, runtime, ramp, after)
        rows = ratio_rows(results, wls, TARGETS, PLAIN)
        print()
        print_ratio_table(rows, PLAIN, extra=("B CPU", 5,
                                              lambda r: f"{r['peer_cpu'] * 100:.0f}%"))
        for wl, t, s in not_insync:
            print(f"# WARNING: {SET} was {s} after a {t} {wl} run (those writes were tracked, "
                  f"not mirrored: that run flatters `mirrored`)")
    if resync:
        resyncs = [resync_round(a, b, rnd, rounds) for rnd in range(rounds)]
        print_resync(resyncs)
    print(f"# initial full copy: {initial['bytes'] / 2**20:.0f} MiB in {initial['s']:.1f}s "
          f"({initial['mbps']:.0f} MB/s, from B ready to InSync)")
    b.stop()
    a.stop()
    elapsed = time.monotonic() - started
    print(f"\n# suite mirror elapsed: {elapsed:.0f}s")
    print_noise(results)
    if rows:
        print("# ratios: mirrored IOPS / plain IOPS (medians over rounds); srvCPU: both daemons;"
              " B CPU: site B's daemon")
    log(f"bench: suite mirror done in {elapsed:.0f}s")
    summary = {k: statistics.median([r[k] for r in resyncs]) for k in
               ("resync_bytes", "insync_s", "mbps", "copy_mbps")} if resyncs else None
    return {"elapsed_s": elapsed, "ports": ports, "initial_sync": initial,
            "workloads": [{"name": w[0], "fio_args": w[1], "direction": w[2], "goal": w[3]}
                          for w in wls],
            "results": rows, "runs": results, "resync_runs": resyncs,
            "resync_median": summary}
