#!/usr/bin/env python3
"""Load client of the operator load test (tests/load.sh): creates N LlamaDuoMigrations as fast
as the API server takes them and times, from a watch on the operator's Jobs, when each gets its
first Job. Standard library only; talks to the API server directly with the admin client
certificate (kubectl creates one object per request, sequentially, under client-side rate
limiting, which would make the creation, not the operator, the thing measured).

  load-client.py --namespace NS --count N --manifest FILE --pid PID --timeout S --out FILE

FILE is one migration as JSON without metadata.name (the client names them load-00000, ...).
Environment (from the cluster's env file): E2E_API_SERVER, E2E_CA_FILE, E2E_ADMIN_CERT,
E2E_ADMIN_KEY.

What it measures, all from one monotonic clock whose zero is the first create request:
  - when the last create was answered (creation throughput);
  - for every migration, when the watch delivered its first Job (label llamaduo.dev/migration);
    a second Job of one migration, or a Job ADDED twice under one name, is a duplicate;
  - the operator's CPU time (utime + stime of /proc/PID/stat) from zero to the last first Job,
    and its VmHWM / VmRSS at that moment; the same CPU time of the --component processes (the
    API server, etcd) and of this client, for where the machine's time went, and the busy CPU
    time of the whole machine (/proc/stat), so other work running meanwhile shows;
  - then, once the operator's reconcile counter has stood still for --settle seconds: its
    CPU, RSS and /metrics (reconciles, failures, decisions, reconcile duration p50/p99).
Writes one JSON object to --out; exits 0 once every migration has a Job, 1 on timeout (the JSON
is written either way, with what was seen).
"""
import argparse
import concurrent.futures
import copy
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse

GROUP_PATH = "/apis/llamaduo.dev/v1alpha1"
MANAGED = "app.kubernetes.io/managed-by=llamaduo-operator"
MIGRATION_LABEL = "llamaduo.dev/migration"


class Api:
    """One keep-alive HTTPS connection to the API server per thread."""

    def __init__(self, url, ca, cert, key):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)
        self.local = threading.local()

    def conn(self, timeout=30):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(self, method, path, body=None):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = self.conn()
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            # A dropped keep-alive connection: reconnect once.
            c.close()
            c = self.local.c = self.conn()
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            return r.status, r.read()


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the ")" of the command name; utime and stime are fields 14 and 15.
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds all cores spent busy since boot (/proc/stat: user, nice, system, irq,
    softirq, steal; guest time is already in user)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def proc_mem_mib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) / 1024
    return out


class JobWatch(threading.Thread):
    """Watches the operator's Jobs in a namespace; records when each migration's first Job
    arrived and any duplicate. Re-lists and re-watches if the stream ends."""

    def __init__(self, api, namespace, clock, deadline):
        super().__init__(daemon=True)
        self.api, self.ns, self.clock, self.deadline = api, namespace, clock, deadline
        self.lock = threading.Lock()
        self.first = {}  # migration -> (seconds, job name)
        self.names = {}  # job name -> uid
        self.duplicates = []  # "reason: detail"
        self.jobs_seen = 0
        self.errors = []
        self.started = threading.Event()

    def path(self, **q):
        q["labelSelector"] = MANAGED
        return f"/apis/batch/v1/namespaces/{self.ns}/jobs?" + urllib.parse.urlencode(q)

    def seen(self, job, t):
        meta = job["metadata"]
        name, uid = meta["name"], meta.get("uid")
        mig = meta.get("labels", {}).get(MIGRATION_LABEL, "")
        with self.lock:
            if name in self.names:
                if self.names[name] != uid:
                    self.duplicates.append(f"Job {name} re-created (uid {self.names[name]} then {uid})")
                    self.names[name] = uid
                return
            self.names[name] = uid
            self.jobs_seen += 1
            if mig in self.first:
                self.duplicates.append(f"migration {mig}: second Job {name} after {self.first[mig][1]}")
            else:
                self.first[mig] = (t, name)

    def list_rv(self):
        status, body = self.api.request("GET", self.path())
        if status != 200:
            raise RuntimeError(f"listing Jobs: HTTP {status}: {body[:300]!r}")
        lst = json.loads(body)
        for j in lst["items"]:
            self.seen(j, self.clock())
        return lst["metadata"]["resourceVersion"]

    def run(self):
        try:
            rv = self.list_rv()
            while time.monotonic() < self.deadline:
                left = max(1, int(self.deadline - time.monotonic()) + 5)
                c = self.api.conn(timeout=left + 30)
                c.request("GET", self.path(watch="1", resourceVersion=rv, timeoutSeconds=str(left),
                                           allowWatchBookmarks="true"))
                r = c.getresponse()
                if r.status != 200:
                    raise RuntimeError(f"watching Jobs: HTTP {r.status}: {r.read()[:300]!r}")
                self.started.set()
                gone = False
                while True:
                    line = r.readline()
                    if not line:
                        break
                    ev = json.loads(line)
                    obj = ev.get("object", {})
                    if ev["type"] == "ERROR":
                        # 410 Gone (resourceVersion too old) or similar: list again.
                        gone = True
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev["type"] == "ADDED":
                        self.seen(obj, self.clock())
                c.close()
                if gone:
                    rv = self.list_rv()
        except Exception as e:  # reported in the result; the main thread fails on it
            self.errors.append(f"{type(e).__name__}: {e}")
            self.started.set()


def scrape(url):
    """The operator's /metrics as {series: value} (histogram buckets keyed by their le)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def histogram_quantile(m, name, q):
    """Prometheus' histogram_quantile over one unlabelled histogram: linear within the bucket."""
    buckets = []
    for k, v in m.items():
        if k.startswith(name + "_bucket{le="):
            le = k.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, lo, below = q * buckets[-1][1], 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lo  # beyond the last finite bucket: its bound is all we know
            return lo + (le - lo) * (rank - below) / max(count - below, 1e-9)
        lo, below = le, count
    return None


def settle(url, quiet_s, limit_s):
    """Polls /metrics until reconciliations_total stays unchanged for quiet_s (at most limit_s):
    the follow-up reconciles (the Job's own watch event, the status write's) are done."""
    last, since, end = None, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < end:
        n = scrape(url).get("llamaduo_reconciliations_total")
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
        time.sleep(0.5)
    return False


def percentile_time(times, n, q):
    """Seconds until q (0..1) of the n migrations had their first Job; None if not reached."""
    k = max(1, -(-int(n * q * 1000) // 1000))  # ceil(n * q), robust to float error
    s = sorted(times)
    return s[k - 1] if len(s) >= k else None


def ms(seconds):
    return round(seconds * 1000, 1) if seconds is not None else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--pid", type=int, required=True, help="the operator's pid")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--workers", type=int, default=8, help="parallel create connections")
    ap.add_argument("--metrics-url", required=True, help="the operator's /metrics")
    ap.add_argument("--settle", type=float, default=5, help="quiet seconds that end the run")
    ap.add_argument("--component", action="append", default=[], metavar="NAME=PID",
                    help="another process whose CPU seconds over the run are reported")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    env = {k: os.environ.get(k) for k in ("E2E_API_SERVER", "E2E_CA_FILE", "E2E_ADMIN_CERT", "E2E_ADMIN_KEY")}
    missing = [k for k, v in env.items() if not v]
    if missing:
        sys.exit(f"load-client: {', '.join(missing)} not set; source the cluster env file first")
    api = Api(env["E2E_API_SERVER"], env["E2E_CA_FILE"], env["E2E_ADMIN_CERT"], env["E2E_ADMIN_KEY"])
    with open(a.manifest) as f:
        template = json.load(f)

    t0 = None
    clock = lambda: time.monotonic() - t0 if t0 is not None else 0.0  # noqa: E731
    watch = JobWatch(api, a.namespace, clock, time.monotonic() + a.timeout + 30)
    watch.start()
    if not watch.started.wait(60) or watch.errors:
        sys.exit(f"load-client: the Job watch did not start: {watch.errors}")

    names = [f"load-{i:05d}" for i in range(a.count)]
    path = f"{GROUP_PATH}/namespaces/{a.namespace}/llamaduomigrations"

    def create(name):
        obj = copy.deepcopy(template)
        obj.setdefault("metadata", {})["name"] = name
        status, body = api.request("POST", path, obj)
        if status != 201:
            raise RuntimeError(f"creating {name}: HTTP {status}: {body[:400]!r}")
        return clock()

    others = dict(c.split("=", 1) for c in a.component)
    others["load-client"] = str(os.getpid())
    busy0 = machine_busy_seconds()
    cpu0 = proc_cpu_seconds(a.pid)
    others0 = {n: proc_cpu_seconds(p) for n, p in others.items()}
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(a.workers) as pool:
        created = list(pool.map(create, names))
    created_s = max(created)
    deadline = t0 + a.timeout
    while time.monotonic() < deadline and not watch.errors:
        with watch.lock:
            if len(watch.first) >= a.count:
                break
        time.sleep(0.05)
    t_end = clock()
    cpu1 = proc_cpu_seconds(a.pid)
    others1 = {n: proc_cpu_seconds(p) for n, p in others.items()}
    busy1 = machine_busy_seconds()
    mem = proc_mem_mib(a.pid)
    with watch.lock:
        first = dict(watch.first)
        dups = list(watch.duplicates)
        jobs_seen = watch.jobs_seen
    # After the last first Job: wait for the operator to go quiet, then read it again.
    settled = settle(a.metrics_url, a.settle, 120) if len(first) >= a.count else False
    t_settled = clock()
    cpu2 = proc_cpu_seconds(a.pid)
    mem2 = proc_mem_mib(a.pid)
    m = scrape(a.metrics_url)
    failures = sum(v for k, v in m.items() if k.startswith("llamaduo_reconcile_failures_total"))
    decisions = {k.split('decision="', 1)[1].split('"', 1)[0]: int(v) for k, v in m.items()
                 if k.startswith("llamaduo_decisions_total{")}
    times = [t for t, _ in first.values()]
    unknown = sorted(set(first) - set(names))
    result = {
        "migrations": a.count,
        "workers": a.workers,
        "created_seconds": round(created_s, 3),
        "creates_per_second": round(a.count / created_s, 1) if created_s > 0 else None,
        "with_first_job": len(first),
        "jobs_seen": jobs_seen,
        "seconds_to_all_first_jobs": round(max(times), 3) if len(first) >= a.count else None,
        "p50_seconds": percentile_time(times, a.count, 0.5),
        "p90_seconds": percentile_time(times, a.count, 0.9),
        "first_job_seconds": round(min(times), 3) if times else None,
        "operator_cpu_seconds": round(cpu1 - cpu0, 2),
        "operator_peak_rss_mib": round(mem.get("VmHWM", 0), 1),
        "operator_rss_mib_at_all_jobs": round(mem.get("VmRSS", 0), 1),
        "cpu_seconds": {n: round(others1[n] - others0[n], 2) for n in others},
        # Everything the machine did meanwhile that is neither the operator nor the cluster nor
        # this client (other people's builds): how loaded the run was.
        "machine_busy_cpu_seconds": round(busy1 - busy0, 2),
        "other_processes_cpu_seconds": round((busy1 - busy0) - (cpu1 - cpu0)
                                             - sum(others1[n] - others0[n] for n in others), 2),
        "cores": os.cpu_count(),
        "measured_seconds": round(t_end, 3),
        "settled": settled,
        "settled_seconds": round(t_settled, 3),
        "operator_cpu_seconds_settled": round(cpu2 - cpu0, 2),
        "operator_peak_rss_mib_settled": round(mem2.get("VmHWM", 0), 1),
        "operator_rss_mib_end": round(mem2.get("VmRSS", 0), 1),
        "reconciliations": int(m.get("llamaduo_reconciliations_total", 0)),
        "reconcile_failures": int(failures),
        "decisions": decisions,
        "reconcile_p50_ms": ms(histogram_quantile(m, "llamaduo_reconcile_duration_seconds", 0.5)),
        "reconcile_p99_ms": ms(histogram_quantile(m, "llamaduo_reconcile_duration_seconds", 0.99)),
        "duplicates": dups,
        "unexpected_migration_labels": unknown,
        "without_job": [n for n in names if n not in first][:20],
        "watch_errors": watch.errors,
    }
    for k in ("p50_seconds", "p90_seconds"):
        if result[k] is not None:
            result[k] = round(result[k], 3)
    with open(a.out, "w") as f:
        json.dump(result, f)
        f.write("\n")
    ok = len(first) >= a.count and not watch.errors
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
