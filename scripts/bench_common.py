"""Shared machinery of scripts/bench: the processes it starts (and stops on any exit), gateway
daemons, fio runs and what is measured around them, interleaved rounds, medians, ratio tables.

Imported by scripts/bench and its suite modules (bench_plugins.py, bench_mirror.py); not a
command of its own.
"""

import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

# fio arguments of every workload any suite runs, so that a workload of one name has the same
# settings in every suite.
FIO = {
    "4k randread QD1": ["--rw=randread", "--bs=4k", "--iodepth=1"],
    "4k randread QD32": ["--rw=randread", "--bs=4k", "--iodepth=32"],
    "4k randwrite QD1": ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
    "4k randwrite QD32": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "4k randwrite 4conn x QD8": ["--rw=randwrite", "--bs=4k", "--iodepth=8", "--numjobs=4"],
    "1M seqread QD8": ["--rw=read", "--bs=1M", "--iodepth=8"],
    "1M seqwrite QD8": ["--rw=write", "--bs=1M", "--iodepth=8"],
}

# ---------------------------------------------------------------------------------------------
# process bookkeeping: everything we start is stopped on exit, whatever the exit path

PROCS = []  # (name, Popen)
TMPDIRS = []  # removed after the processes are stopped


def _pdeathsig():
    # If this script is SIGKILLed, the kernel kills the children too.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(name, argv, **kw):
    p = subprocess.Popen(argv, preexec_fn=_pdeathsig, **kw)
    PROCS.append((name, p))
    return p


def forget(p):
    """Drop a process that has ended from the bookkeeping."""
    PROCS[:] = [(n, q) for n, q in PROCS if q is not p]


def stop(p, timeout=10):
    if p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    except ProcessLookupError:
        pass


def cleanup():
    while PROCS:
        _, p = PROCS.pop()
        stop(p)
    while TMPDIRS:
        shutil.rmtree(TMPDIRS.pop(), ignore_errors=True)


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


atexit.register(cleanup)
for _s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_s, on_signal)


def die(msg):
    print(f"bench: error: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


# ---------------------------------------------------------------------------------------------
# servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n):
    """n distinct free ports (free_port alone may hand out one twice in quick succession)."""
    ports = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def wait_port(port, proc, name, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"{name} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    die(f"{name} did not listen on port {port} within {timeout}s")


class Gateway:
    """A gateway daemon: `gateway serve --config TMP/NAME.toml --listen 127.0.0.1:PORT
    --data-dir DATA`, logging (appending, across restarts) to TMP/NAME.log."""

    def __init__(self, binary, tmp, name, config_text, data=None, port=None):
        self.binary, self.name = binary, name
        self.port = port or free_port()
        self.data = data or os.path.join(tmp, f"{name}-data")
        os.makedirs(self.data, exist_ok=True)
        self.config = os.path.join(tmp, f"{name}.toml")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.logpath = os.path.join(tmp, f"{name}.log")
        self.proc = None
        self._log_from = 0

    @property
    def pid(self):
        return self.proc.pid

    @property
    def admin_socket(self):
        return os.path.join(self.data, "admin.sock")

    def spawn(self):
        """Start the daemon and return at once (see wait_ready)."""
        self._log_from = os.path.getsize(self.logpath) if os.path.exists(self.logpath) else 0
        logf = open(self.logpath, "a")
        env = dict(os.environ)
        env.setdefault("GATEWAY_LOG", "info")
        self.proc = spawn(self.name, [self.binary, "serve", "--config", self.config,
                                      "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data],
                          stdout=logf, stderr=logf, env=env)
        logf.close()
        return self.proc

    def log_text(self, since_start=True):
        with open(self.logpath, errors="replace") as f:
            if since_start:
                f.seek(self._log_from)
            return f.read()

    def ready(self):
        """Whether this run of the daemon has logged 'gateway ready' (dies if it exited)."""
        if "gateway ready" in self.log_text():
            return True
        if self.proc.poll() is not None:
            die(f"{self.name} exited with status {self.proc.returncode}; its log:\n"
                f"{self.log_text()}")
        return False

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while not self.ready():
            if time.time() > deadline:
                die(f"{self.name} did not log 'gateway ready' within {timeout}s; its log:\n"
                    f"{self.log_text()}")
            time.sleep(0.05)
        wait_port(self.port, self.proc, self.name)

    def start(self, timeout=60):
        self.spawn()
        self.wait_ready(timeout)
        return self

    def stop(self):
        """SIGTERM (an orderly stop), then wait."""
        stop(self.proc)
        forget(self.proc)

    def kill(self):
        """SIGKILL, as a crash would."""
        self.proc.kill()
        self.proc.wait()
        forget(self.proc)

    def uri(self, export):
        return f"nbd://127.0.0.1:{self.port}/{export}"

    def admin(self, req, timeout=30):
        """One request on the admin socket (what `gateway ctl` sends); the parsed answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.admin_socket)
            s.sendall((json.dumps(req) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if reply.get("ok") is not True:
            die(f"{self.name}: admin request {req} failed: {reply.get('error')}")
        return reply["result"]

    def ctl(self, *args, timeout=None):
        """`gateway ctl --data-dir DATA ARGS...`; dies if it fails."""
        argv = [self.binary, "ctl", "--data-dir", self.data, *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            die(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}\n"
                f"{self.name}'s log:\n{self.log_text(False)[-4000:]}")
        return r.stdout


def busy_cpu():
    """Non-idle CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    t = os.times()
    return t.children_user + t.children_system


def proc_stats(pid):
    """CPU seconds (user+system, all threads) and minor page faults of a process. (Context
    switches are not taken: Linux keeps them per thread and loses them when a thread exits, as
    nbdkit's per-connection and qemu-nbd's worker threads do.)"""
    out = {"cpu": float("nan"), "minflt": 0}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out["minflt"] = int(fields[7])
    except (OSError, IndexError, ValueError):
        pass
    return out


# ---------------------------------------------------------------------------------------------
# fio


def run_fio(uri, args, timeout):
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
            "--group_reporting", *args]
    p = spawn("fio", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p)
        die(f"fio timed out: {' '.join(argv)}")
    finally:
        forget(p)
    # fio prints "fio: connected to NBD server" lines before its JSON.
    i = out.find("{")
    if p.returncode != 0 or i < 0:
        die(f"fio failed ({p.returncode}): {' '.join(argv)}\n{err}\n{out}")
    try:
        doc = json.loads(out[i:])
    except json.JSONDecodeError as e:
        die(f"fio printed unparsable JSON ({e}): {' '.join(argv)}\n{out}")
    job = doc["jobs"][0]
    if job.get("error"):
        die(f"fio job error {job['error']}: {' '.join(argv)}\n{err}")
    return job


def measure(target, uri, pids, wl, runtime, ramp):
    """One timed fio run of workload wl = (name, fio args, direction, goal). pids: the server
    process, or a list of the processes that serve the target (their CPU time is summed, and
    also given one by one in srv_cpu_each)."""
    name, args, ddir, _ = wl
    pids = pids if isinstance(pids, (list, tuple)) else [pids]
    fio_args = [*args, f"--runtime={runtime}", "--time_based", f"--ramp_time={ramp}",
                "--norandommap", "--randrepeat=0"]
    b0, f0, s0, t0 = busy_cpu(), children_cpu(), [proc_stats(p) for p in pids], time.monotonic()
    job = run_fio(uri, fio_args, timeout=runtime + ramp + 60)
    s1, t1, f1, b1 = [proc_stats(p) for p in pids], time.monotonic(), children_cpu(), busy_cpu()
    each = [b["cpu"] - a["cpu"] for a, b in zip(s0, s1)]
    c = sum(each)
    minflt = sum(b["minflt"] - a["minflt"] for a, b in zip(s0, s1))
    # IOs over the whole run, ramp included, for the per-IO figures (the server's counters
    # cover the ramp too); approximate.
    ios = max(job[ddir]["iops"] * (runtime + ramp), 1)
    st = job[ddir]
    pct = st.get("clat_ns", {}).get("percentile", {})
    p99 = pct.get("99.000000")
    r = {
        "iops": st["iops"],
        "mbps": st["bw_bytes"] / 1e6,
        "p99_us": p99 / 1000 if p99 is not None else float("nan"),
        "mean_us": st.get("clat_ns", {}).get("mean", float("nan")) / 1000,
        "srv_cpu": c / (t1 - t0),
        "srv_cpu_us_per_io": c * 1e6 / ios,
        # Minor page faults (e.g. fresh buffers being faulted in).
        "srv_minflt_per_io": minflt / ios,
        "fio_cpu": (f1 - f0) / (t1 - t0),
        # CPU used by everything but this server and fio (other jobs on the machine, and
        # interrupt time not charged to a process): a noise indicator, in cores.
        "other_cpu": max(0.0, ((b1 - b0) - c - (f1 - f0)) / (t1 - t0)),
    }
    if len(pids) > 1:
        r["srv_cpu_each"] = [x / (t1 - t0) for x in each]
    return r


def prefill(target, uri, size):
    t = time.monotonic()
    job = run_fio(uri, ["--rw=write", "--bs=1M", "--iodepth=8", f"--size={size}"], timeout=600)
    log(f"bench: prefilled {target}: {job['write']['bw_bytes'] / 1e6:.0f} MB/s, "
        f"{time.monotonic() - t:.1f}s")


def run_interleaved(workloads, targets, uris, pids, rounds, runtime, ramp, after=None):
    """For each workload, round after round, every target in order. Returns {workload:
    {target: [run, ...]}}. after(target, workload, run) is called after each run."""
    results = {}
    for wl in workloads:
        per = results.setdefault(wl[0], {t: [] for t in targets})
        for rnd in range(rounds):
            for t in targets:
                r = measure(t, uris[t], pids[t], wl, runtime, ramp)
                if after:
                    after(t, wl, r)
                per[t].append(r)
                log(f"bench: {wl[0]:<25} round {rnd + 1}/{rounds} {t:<14} "
                    f"{r['iops']:>9.0f} IOPS {r['mbps']:>8.1f} MB/s p99 {r['p99_us']:>7.0f} µs "
                    f"srv CPU {r['srv_cpu'] * 100:>4.0f}% other CPU {r['other_cpu'] * 100:>4.0f}%")
    return results


# ---------------------------------------------------------------------------------------------
# report


def med(runs, key):
    vals = [r[key] for r in runs if r[key] == r[key]]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def fmt_thr(thr):
    """0.9 -> "0.9", 1.0 -> "1.0", 0.95 -> "0.95"."""
    s = f"{thr:.2f}"
    return s[:-1] if s.endswith("0") else s


def fmt_ratio(r, thr):
    if r != r:
        return "-"
    s = f"{r:.2f}x"
    if thr is not None:
        s += f" (>={fmt_thr(thr)} {'ok' if r >= thr else 'MISS'})"
    return s


def ratio_rows(results, workloads, targets, base):
    """Rows of a table where every target is compared with `base` (one of targets): each row
    has the medians of the numeric metrics over the rounds, the spread of IOPS, and for every
    target but base `ratio` = its median IOPS / base's, with `goal` = the workload's goal
    (wl[3]: a minimum ratio, or None) and `met`."""
    rows = []
    for name, _, _, goal in workloads:
        per = results.get(name)
        if not per or not per.get(base):
            continue
        medians = {t: {k: med(per[t], k) for k, v in per[t][0].items()
                       if isinstance(v, (int, float))}
                   for t in targets if per.get(t)}
        for t in targets:
            if t not in medians:
                continue
            m = medians[t]
            iops = [r["iops"] for r in per[t]]
            row = {"workload": name, "target": t, **m, "rounds": len(iops), "iops_runs": iops,
                   "spread": (max(iops) - min(iops)) / m["iops"] if m["iops"] else float("nan")}
            if t != base:
                row["vs"] = base
                row["ratio"] = m["iops"] / medians[base]["iops"]
                row["goal"] = goal
                row["met"] = None if goal is None else row["ratio"] >= goal
            rows.append(row)
    return rows


def print_ratio_table(rows, base, extra=None):
    """The table of ratio_rows. extra: optional (header, width, row -> str) column printed
    after `spread`."""
    col = f"vs {base}"
    xh = f" {extra[0]:>{extra[1]}}" if extra else ""
    hdr = (f"{'workload':<24} {'target':<14} {'IOPS':>8} {'MB/s':>7} {'p99 µs':>7} "
           f"{'srvCPU':>6} {'µs/IO':>6} {'other':>5} {'spread':>6}{xh}  {col:<24}")
    print(hdr.rstrip())
    print("-" * len(hdr))
    last = None
    for r in rows:
        wl = r["workload"] if r["workload"] != last else ""
        if r["workload"] != last and last is not None:
            print()
        last = r["workload"]
        vs = ""
        if "ratio" in r:
            vs = fmt_ratio(r["ratio"], r["goal"]) + ("" if r["goal"] is not None else " (no goal)")
        xv = f" {extra[2](r):>{extra[1]}}" if extra else ""
        print(f"{wl:<24} {r['target']:<14} {r['iops']:>8.0f} {r['mbps']:>7.0f} "
              f"{r['p99_us']:>7.0f} {r['srv_cpu'] * 100:>5.0f}% {r['srv_cpu_us_per_io']:>6.1f} "
              f"{r['other_cpu'] * 100:>4.0f}% {r['spread'] * 100:>5.0f}%{xv}  {vs}".rstrip())
    goals = [r for r in rows if r.get("goal") is not None]
    missed = [r for r in goals if not r["met"]]
    print()
    print(f"goals met: {len(goals) - len(missed)}/{len(goals)}")
    for r in missed:
        print(f"  MISS {r['workload']}: {r['target']} {r['ratio']:.2f}x {r['vs']} "
              f"(goal >= {fmt_thr(r['goal'])})")


def print_noise(results):
    """The line on CPU used by other processes during the runs of a suite."""
    other = [r["other_cpu"] for per in results.values() for runs in per.values() for r in runs]
    if not other:
        return
    noisy = sum(1 for o in other if o > 0.25)
    print(f"# CPU used by other processes during the runs: median "
          f"{statistics.median(other) * 100:.0f}%, max {max(other) * 100:.0f}% of a core; "
          f"{noisy}/{len(other)} runs above 25%"
          + (" (noisy: compare ratios, not absolute numbers)" if noisy else ""))


def nan_to_none(x):
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return x
