#!/usr/bin/env python3
"""bench/report.py -- turn script/bench's raw.txt into tables, targets and plot data.

    report.py RAW OUTDIR              write OUTDIR/results.md, OUTDIR/plot-*.dat,
                                      OUTDIR/plot-vars.gp; print results.md
    report.py --update-doc DOC MD     replace DOC's generated block with MD

raw.txt holds one measurement per line as key=value pairs (kind=tput, syscalls,
instr, churn, memory, meta).  Medians are over rounds; a ratio X/Y is the median
of the per-round ratios (X and Y ran back to back in each round, so drift of
the machine cancels within a round), which is what the targets are judged on.
A run that failed is never a number: its cell says "failed".
"""
import os
import re
import statistics
import sys

VARIANTS = ["a", "b", "c", "d", "e1", "e2"]
# (f), the floor (bench/floor.c), runs only where the (a) >= (d) target is
# read: its own column in the tables, not in the plot.
TABLE_VARIANTS = VARIANTS + ["f"]
VNAME = {
    "a": "(a) pqawait",
    "b": "(b) pqawait, loop/CPU",
    "c": "(c) threads",
    "d": "(d) libev by hand",
    "e1": "(e) pgbench -j1",
    "e2": "(e) pgbench -j2",
    "f": "(f) floor",
}
PANELS = [  # name, title, workloads (direct first, then pgbouncer), unit
    ("select1", "SELECT 1", ["select1"], "queries/s"),
    ("point", "point select (prepared; unnamed through pgbouncer)", ["point", "extended"], "queries/s"),
    ("copy", "COPY OUT, 1 MiB", ["copy"], "COPYs/s (= MiB/s)"),
    ("storm", "connect, SELECT 1, disconnect", ["storm"], "sessions/s"),
]
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def parse(path):
    recs = []
    with open(path) as f:
        for line in f:
            d = {}
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    d[k] = v
            if d:
                recs.append(d)
    return recs


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt(v, digits=0):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


class Tput:
    """Throughput runs, by (workload, route, sessions) and variant."""

    def __init__(self, recs):
        self.runs = {}  # (w, route, n) -> {variant: {round: rec}}
        self.order = []
        for r in recs:
            if r.get("kind") != "tput":
                continue
            key = (r["workload"], r["route"], int(r["sessions"]))
            if key not in self.runs:
                self.runs[key] = {}
                self.order.append(key)
            self.runs[key].setdefault(r["variant"], {})[int(r["round"])] = r

    def ok(self, key, v):
        """Per-round ops/s of a variant, or None if any round failed."""
        rounds = self.runs.get(key, {}).get(v)
        if not rounds:
            return None
        if any(r.get("status") != "ok" for r in rounds.values()):
            return "failed"
        return {k: float(r["ops_s"]) for k, r in rounds.items()}

    def median(self, key, v):
        x = self.ok(key, v)
        if not isinstance(x, dict):
            return x
        return statistics.median(x.values())

    def ratio(self, key, x, y):
        a, b = self.ok(key, x), self.ok(key, y)
        if not isinstance(a, dict) or not isinstance(b, dict):
            return None
        rs = [a[k] / b[k] for k in a if k in b and b[k] > 0]
        return statistics.median(rs) if rs else None

    def field_max(self, field, variant, skip_workloads=()):
        vals = []
        for key, vs in self.runs.items():
            if key[0] in skip_workloads:
                continue
            for r in vs.get(variant, {}).values():
                if r.get("status") == "ok" and field in r:
                    vals.append(float(r[field]))
        return max(vals) if vals else None


def cell_label(key):
    w, route, n = key
    return f"{n}" + (" via pgbouncer" if route == "pgbouncer" else "")


def tput_tables(t, out):
    for name, title, workloads, unit in PANELS:
        keys = [k for k in t.order if k[0] in workloads]
        if not keys:
            continue
        out.append(f"#### {title} — {unit}\n")
        out.append("| sessions | " + " | ".join(VNAME[v] for v in TABLE_VARIANTS) + " | a/d | a/e1 | b/c | f/d |")
        out.append("|---|" + "---:|" * (len(TABLE_VARIANTS) + 4))
        for key in keys:
            cells = []
            for v in TABLE_VARIANTS:
                m = t.median(key, v)
                cells.append("failed" if m == "failed" else fmt(m))
            ratios = [t.ratio(key, "a", "d"), t.ratio(key, "a", "e1"), t.ratio(key, "b", "c"), t.ratio(key, "f", "d")]
            label = cell_label(key) + (" (unnamed)" if key[0] == "extended" else "")
            out.append(f"| {label} | " + " | ".join(cells) + " | " +
                       " | ".join(fmt(r, 2) for r in ratios) + " |")
        out.append("")


def write_plot_data(t, outdir):
    seps = {}
    for name, _title, workloads, _unit in PANELS:
        keys = [k for k in t.order if k[0] in workloads]
        keys.sort(key=lambda k: (k[1] != "direct", k[2]))
        # label, x position, one column per variant; a blank line between
        # the direct and the pgbouncer cells, so no line joins the two routes.
        with open(os.path.join(outdir, f"plot-{name}.dat"), "w") as f:
            f.write("sessions x " + " ".join(f'"{VNAME[v]}"' for v in VARIANTS) + "\n")
            for x, key in enumerate(keys):
                if x and key[1] != keys[x - 1][1]:
                    f.write("\n")
                label = f"{key[2]}" if key[1] == "direct" else f"{key[2]}\\npgb"
                vals = []
                for v in VARIANTS:
                    m = t.median(key, v)
                    vals.append(f"{m:.1f}" if isinstance(m, float) else "NaN")
                f.write(f'"{label}" {x} ' + " ".join(vals) + "\n")
        ndirect = sum(1 for k in keys if k[1] == "direct")
        seps[name] = (ndirect - 0.5 if 0 < ndirect < len(keys) else -1, len(keys))
    with open(os.path.join(outdir, "plot-vars.gp"), "w") as f:
        for name, (s, n) in seps.items():
            f.write(f"sep_{name} = {s}\nn_{name} = {n}\n")


def find(recs, **kw):
    for r in recs:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def calls_tables(recs, out):
    rows = [r for r in recs if r.get("kind") == "syscalls"]
    if not rows:
        return
    cols = ["total", "epoll_wait", "epoll_ctl", "sendto", "recvfrom", "poll", "futex", "other"]
    out.append("#### System calls per query (client, SELECT 1; runs at N and 2N subtracted)\n")
    out.append("| variant | sessions | tool | " + " | ".join(cols) + " |")
    out.append("|---|---:|---|" + "---:|" * len(cols))
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"| {VNAME.get(r['variant'], r['variant'])} | {r['sessions']} | {r['tool']} | failed |")
            continue
        out.append(f"| {VNAME.get(r['variant'], r['variant'])} | {r['sessions']} | {r['tool']} | " +
                   " | ".join(fmt(num(r.get(c)), 3) for c in cols) + " |")
    out.append("")


def instr_tables(recs, out):
    rows = [r for r in recs if r.get("kind") == "instr"]
    if not rows:
        return
    out.append("#### Client instructions per operation (callgrind, user space; N and 2N subtracted)\n")
    out.append("| workload | sessions | (a) pqawait | (c) threads | (d) libev by hand | a/d | (f) floor | f/d |"
               " (c) with the shim linked | pass-through (+) | (d) with the shim linked |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    seen = []
    for r in rows:
        k = (r["workload"], r["sessions"])
        if k not in seen:
            seen.append(k)
    for w, n in seen:
        def g(exe, v):
            r = find(rows, exe=exe, variant=v, workload=w, sessions=n)
            if not r:
                return None
            return "failed" if r.get("status") != "ok" else float(r["per_op"])
        a, c, d = g("bench-pg", "a"), g("bench-pg-plain", "c"), g("bench-pg-plain", "d")
        cs, ds = g("bench-pg", "c"), g("bench-pg", "d")
        fl = g("bench-pg-floor", "f")
        f = lambda x: "failed" if x == "failed" else fmt(x)
        both = lambda x, y: isinstance(x, float) and isinstance(y, float)
        out.append(f"| {w} | {n} | {f(a)} | {f(c)} | {f(d)} | {fmt(a / d, 2) if both(a, d) else '—'} | "
                   f"{f(fl)} | {fmt(fl / d, 3) if both(fl, d) else '—'} | "
                   f"{f(cs)} | {fmt(cs - c, 0) if both(cs, c) else '—'} | {f(ds)} |")
    out.append("")


def memory_table(recs, out):
    rows = [r for r in recs if r.get("kind") == "memory"]
    if not rows:
        return
    out.append("#### Sessions held through pgbouncer on one loop (connect, 1 query, idle; then 3 queries)\n")
    out.append("| variant | sessions | errors | connect all (s) | RSS before | RSS held | per session | mappings |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"| {VNAME.get(r.get('variant'), r.get('variant'))} | {r.get('sessions')} | "
                       f"failed ({r.get('errors', '?')} errors, {r.get('failed', '?')} sessions failed) |")
            continue
        what = "(a) tasks + PGconn" if r["variant"] == "a" else "(d) PGconn only (no tasks)"
        out.append(f"| {what} | {fmt(num(r['sessions']))} | {r['errors']} | {fmt(num(r['connect_s']), 2)} | "
                   f"{fmt(num(r['rss_base']) / 2**20, 1)} MiB | {fmt(num(r['rss_held']) / 2**20, 1)} MiB | "
                   f"{fmt(num(r['rss_per_session']) / 1024, 1)} KiB | {r['maps']} |")
    out.append("")


def verdict(ok):
    return "—" if ok is None else ("**holds**" if ok else "**misses**")


def targets(recs, t, out):
    rows = []

    def ratio_rule(desc, x, y, workloads, sessions, bound):
        texts, vals = [], []
        for w in workloads:
            for n in sessions:
                r = t.ratio((w, "direct", n), x, y)
                texts.append(f"{w} {n}: {fmt(r, 2)}")
                vals.append(r)
        ok = None if None in vals else all(r >= bound for r in vals)
        rows.append((desc, "; ".join(texts), verdict(ok)))

    ratio_rule("(a) ≥ 1.0× (d) at 16, 64, 256 sessions (throughput)", "a", "d",
               ["select1", "point"], [16, 64, 256], 1.0)
    ratio_rule("(a) ≥ 1.3× pgbench -j 1 at 16 and 64 sessions", "a", "e1", ["select1", "point"], [16, 64], 1.3)
    texts = []
    for w in ["select1", "point"]:
        for n in [16, 64, 256]:
            rd, re1 = t.ratio((w, "direct", n), "f", "d"), t.ratio((w, "direct", n), "f", "e1")
            if rd is not None:
                texts.append(f"{w} {n}: {fmt(rd, 2)} (d)" + (f", {fmt(re1, 2)} pgbench -j1" if n < 256 else ""))
    if texts:
        rows.append(("… the floor's throughput, (f)/(d) and (f)/(e1) (not a target: what the least hook reaches)",
                     "; ".join(texts), "measured"))

    def calls(tool):
        return find(recs, kind="syscalls", tool=tool, variant="a", workload="select1", sessions="16", status="ok")
    p, s = calls("perf"), calls("strace")
    main = p or s
    val = num(main["total"]) if main else None
    desc = (f"{fmt(val, 3)} ({'perf' if p else 'strace'})" + (f"; strace -c: {fmt(num(s['total']), 3)}" if p and s else "")
            if main else "—")
    rows.append(("≤ 2.1 system calls per query at 16 sessions ((a), SELECT 1)", desc,
                 verdict(None if val is None else val <= 2.1)))

    steady = t.field_max("ctl_sess_per_op", "a", skip_workloads=("storm",))
    churn = find(recs, kind="churn", status="ok")
    cv = num(churn["ctl_sess_per_op"]) if churn else None
    rows.append(("0 epoll_ctl per query in steady state ((a), the sessions' sockets)",
                 f"max over (a)'s timed runs: {fmt(steady, 4)}", verdict(None if steady is None else steady < 5e-4)))
    rows.append(("… also under connection churn elsewhere in the process",
                 (f"{fmt(cv, 4)} per query ({churn['churn_ops']} churn connections in the window; "
                  f"{fmt(num(churn['ctl_per_op']), 4)} per query counting the churn's own)") if churn else "—",
                 verdict(None if cv is None else cv < 5e-4)))

    def instr(exe, v, w, n="1"):
        r = find(recs, kind="instr", exe=exe, variant=v, workload=w, sessions=n, status="ok")
        return float(r["per_op"]) if r else None
    ia, idd = instr("bench-pg", "a", "select1"), instr("bench-pg-plain", "d", "select1")
    pa, pd = instr("bench-pg", "a", "point"), instr("bench-pg-plain", "d", "point")
    okv = None if None in (ia, idd) else ia / idd <= 1.05
    rows.append(("client instructions per query ≤ 1.05× (d) inside a task ((d) without the shim)",
                 f"SELECT 1: {fmt(ia)} / {fmt(idd)} = {fmt(ia / idd, 2) if okv is not None else '—'}"
                 + (f"; point: {fmt(pa)} / {fmt(pd)} = {fmt(pa / pd, 2)}" if pa and pd else ""), verdict(okv)))
    fa, f16, d16 = (instr("bench-pg-floor", "f", "select1"), instr("bench-pg-floor", "f", "select1", "16"),
                    instr("bench-pg-plain", "d", "select1", "16"))
    if fa and idd:
        rows.append(("… the floor under it: (f), libpq's blocking path with the least hook (bench/floor.c)",
                     f"SELECT 1: {fmt(fa)} / {fmt(idd)} = {fmt(fa / idd, 3)}"
                     + (f"; 16 sessions: {fmt(f16)} / {fmt(d16)} = {fmt(f16 / d16, 3)}" if f16 and d16 else ""),
                     "the floor itself " + ("misses" if fa / idd > 1.05 else "meets") + " 1.05×"))
    cs, cp = instr("bench-pg", "c", "select1"), instr("bench-pg-plain", "c", "select1")
    okv = None if None in (cs, cp) else cs - cp <= 100
    rows.append(("pass-through outside a task ≤ +100 instructions per query",
                 f"SELECT 1: {fmt(cs)} − {fmt(cp)} = +{fmt(cs - cp) if okv is not None else '—'}", verdict(okv)))

    ratio_rule("(b) ≥ 1.0× (c) at 64 sessions", "b", "c", ["select1", "point"], [64], 1.0)

    r1, r16 = t.ratio(("copy", "direct", 1), "a", "c"), t.ratio(("copy", "direct", 16), "a", "c")
    rows.append(("COPY OUT throughput ≥ 0.95× plain blocking libpq ((a)/(c), 1 session)",
                 f"1 session: {fmt(r1, 2)}; 16 sessions: {fmt(r16, 2)}", verdict(None if r1 is None else r1 >= 0.95)))

    m = find(recs, kind="memory", variant="a")
    if m and m.get("status") == "ok":
        rows.append((f"{fmt(num(m['sessions']))} sessions through pgbouncer on one loop complete without error",
                     f"{m['errors']} errors, {m['failed']} sessions failed, all connected in {fmt(num(m['connect_s']), 2)} s",
                     verdict(True)))
        per = num(m["rss_per_session"]) / 1024
        rows.append(("memory per session (task + PGconn) < 64 KiB of RSS", f"{fmt(per, 1)} KiB", verdict(per < 64)))
    else:
        rows.append(("10,000 sessions through pgbouncer on one loop complete without error",
                     "failed" if m else "not run", verdict(False if m else None)))
        rows.append(("memory per session (task + PGconn) < 64 KiB of RSS", "—", verdict(None)))
    h = http_summary(recs)
    if h:
        rows.append(("HTTP service under wrk (`--threads 1`, `2`): tasks against the same handlers without tasks",
                     "; ".join(f"--threads {t}: {fmt(h[t]['tasks'])} vs {fmt(h[t]['blocking'])} req/s = "
                               f"{fmt(h[t]['ratio'], 1)}×" for t in sorted(h)), "measured (no target)"))
    else:
        rows.append(("HTTP service under wrk (`--threads 1`, `2`)", "not run (wrk missing or BENCH_CELLS)", "—"))

    out.append("#### Targets\n")
    out.append("| target | measured | today |")
    out.append("|---|---|---|")
    for a, b, c in rows:
        out.append(f"| {a} | {b} | {c} |")
    out.append("")


def http_summary(recs):
    """{threads: {tasks, blocking, ratio, p50/p99 of each}} over the ok runs
    of bench/http.sh; the ratio is the median of per-round ratios."""
    rows = [r for r in recs if r.get("kind") == "http"]
    out = {}
    for t in sorted({r["threads"] for r in rows}, key=int):
        def runs(v):
            return {r["round"]: r for r in rows if r["threads"] == t and r["variant"] == v}
        a, b = runs("tasks"), runs("blocking")
        if any(r.get("status") != "ok" for r in list(a.values()) + list(b.values())):
            continue
        ratios = [num(a[k]["rps"]) / num(b[k]["rps"]) for k in a if k in b and num(b[k]["rps"])]
        if not ratios:
            continue
        med = lambda v, f: statistics.median(num(r[f]) for r in v.values())
        out[int(t)] = {"tasks": med(a, "rps"), "blocking": med(b, "rps"), "ratio": statistics.median(ratios),
                       "tasks_p50": med(a, "p50_ms"), "tasks_p99": med(a, "p99_ms"),
                       "blocking_p50": med(b, "p50_ms"), "blocking_p99": med(b, "p99_ms")}
    return out


def http_table(recs, out):
    h = http_summary(recs)
    if not h:
        return
    out.append("#### HTTP service (examples/server under `wrk -t2 -c64`, GET /items/ID; medians)\n")
    out.append("| `--threads` | tasks (pool 16) req/s | p50 / p99 ms | blocking handlers req/s | p50 / p99 ms | tasks/blocking |")
    out.append("|---|---|---|---|---|---|")
    for t in sorted(h):
        x = h[t]
        out.append(f"| {t} | {fmt(x['tasks'])} | {fmt(x['tasks_p50'], 2)} / {fmt(x['tasks_p99'], 2)} | "
                   f"{fmt(x['blocking'])} | {fmt(x['blocking_p50'], 2)} / {fmt(x['blocking_p99'], 2)} | "
                   f"{fmt(x['ratio'], 2)} |")
    out.append("")


def report(raw, outdir):
    recs = parse(raw)
    t = Tput(recs)
    meta = {}
    for r in recs:
        if r.get("kind") == "meta":
            meta.update(r)
    out = []
    out.append(f"Generated by `script/bench` on {meta.get('date', '?')}: {meta.get('cpus', '?')} CPUs "
               f"({meta.get('cpu', '?').replace('_', ' ')}), Linux {meta.get('kernel', '?')}, "
               f"PostgreSQL {meta.get('postgres', '?')}, libpq {meta.get('libpq', '?')}, "
               f"pgbouncer {meta.get('pgbouncer', '?')} (pool {meta.get('pool', '?')}), gcc {meta.get('cc', '?')}, "
               f"commit {meta.get('commit', '?')}; {meta.get('rounds', '?')} interleaved rounds of "
               f"{meta.get('duration', '?')} s windows after {meta.get('warmup', '?')} s of warm-up; "
               f"the whole run took {meta.get('elapsed_s', '?')} s.\n")
    targets(recs, t, out)
    out.append("#### Throughput (medians over rounds; ratios are medians of per-round ratios)\n")
    tput_tables(t, out)
    calls_tables(recs, out)
    instr_tables(recs, out)
    memory_table(recs, out)
    http_table(recs, out)
    failed = [r for r in recs if r.get("status") == "failed"]
    if failed:
        out.append("#### Failed runs\n")
        for r in failed:
            out.append("- " + " ".join(f"{k}={v}" for k, v in r.items() if k != "status"))
        out.append("")
    text = "\n".join(out)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(text)
    write_plot_data(t, outdir)
    print(text)


def update_doc(doc, md):
    with open(doc) as f:
        text = f.read()
    with open(md) as f:
        block = f.read().strip()
    pat = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pat.search(text):
        sys.exit(f"report.py: {doc} has no {BEGIN} ... {END} block")
    text = pat.sub(lambda _m: f"{BEGIN}\n{block}\n{END}", text)
    with open(doc, "w") as f:
        f.write(text)


def main(argv):
    if len(argv) == 4 and argv[1] == "--update-doc":
        update_doc(argv[2], argv[3])
    elif len(argv) == 3:
        report(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
