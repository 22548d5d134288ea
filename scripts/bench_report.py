#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw data (bench/raw) into bench/RESULTS.md and bench/latency.png.

usage: bench_report.py RAW_DIR OUT_DIR   (matplotlib is optional: without it, no PNG)
"""
import json
import os
import re
import sys

raw, out = sys.argv[1], sys.argv[2]
# The sizes the run used (raw/env.txt, written by bench.sh), so re-rendering a report
# later from the same raw data shows them; the environment fills in what is missing.
_sizes = {}
if os.path.exists(os.path.join(raw, "env.txt")):
    for line in open(os.path.join(raw, "env.txt")):
        k, _, v = line.rstrip("\n").partition("=")
        if k.startswith("BENCH_"):
            _sizes[k] = v


def env(k):
    return _sizes.get(k) or os.environ.get(k)



def load_json(name):
    p = os.path.join(raw, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def text(name):
    p = os.path.join(raw, name)
    return open(p).read() if os.path.exists(p) else ""


def pgbench(name, tag=""):
    """tps, failed and latency percentiles (ms) of a pgbench run (stdout + -l log);
    tag "ref-" for the fsync-off reference."""
    t = text(f"{tag}pgbench-{name}.txt")
    if not t:
        return None
    m = re.search(r"tps = ([0-9.]+)", t)
    n = re.search(r"number of transactions actually processed: (\d+)", t)
    f = re.search(r"number of failed transactions: (\d+)", t)
    lat = []
    for line in text(f"{tag}pgbench-{name}.log").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            lat.append(int(parts[2]) / 1000.0)
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    return {
        "tps": float(m.group(1)) if m else float("nan"),
        "count": int(n.group(1)) if n else len(lat),
        "failed": int(f.group(1)) if f else 0,
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": lat[-1] if lat else float("nan"),
    }


def cpu_delta(before, after):
    """{name: delta} of two cpu_snapshot files (ticks; `messages` is a count)."""
    def parse(name):
        out = {}
        for line in text(name).splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    out[parts[0]] = int(parts[1])
                except ValueError:
                    pass
        return out
    b, a = parse(before), parse(after)
    if not b or not a:
        return None
    return {k: a[k] - b.get(k, 0) for k in a}


def loadavg(n):
    lines = text(f"load-{n}.txt").split("\n")
    lines = [l for l in lines if l.strip()]
    if not lines:
        return "-"
    return " → ".join(lines[:2])


def row(name, s):
    return (f"| {name} | {s['count']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {s['p999_ms']:.2f} | {s['max_ms']:.2f} |")


LAT_HEAD = "| latency (ms) | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|"


def verification(r):
    v = r["verification"]
    ok = "OK" if v["missing"] + v["duplicates"] + v["out_of_order"] + v["mismatched"] + v["unexpected"] == 0 else "**FAILED**"
    return (f"verification {ok}: {v['streams']} (receiver, channel) streams, {v['delivered']} deliveries; "
            f"missing {v['missing']}, duplicates {v['duplicates']}, out of order {v['out_of_order']}, "
            f"mismatched {v['mismatched']}")


machine = dict(l.split("=", 1) for l in text("machine.txt").splitlines() if "=" in l)
ramp, fixed, fanout = load_json("ramp.json"), load_json("fixed.json"), load_json("fanout.json")
idle, history = load_json("idle.json"), load_json("history.json")
pg_batch1, pg_simple = pgbench("send"), pgbench("send-simple")
pg_key, pg_off = pgbench("keyset"), pgbench("offset")
# The ceiling is the faster of the two one-message-per-transaction scripts.
pg_runs = [r for r in (pg_batch1, pg_simple) if r]
pg_send = max(pg_runs, key=lambda r: r["tps"]) if pg_runs else None
hot = load_json("hot.json")
abuse_open, abuse_def = load_json("abuse-open.json"), load_json("abuse-defaults.json")
ref_ramp = load_json("ref-ramp.json")
ref_pg_runs = [r for r in (pgbench("send", "ref-"), pgbench("send-simple", "ref-")) if r]
ref_pg = max(ref_pg_runs, key=lambda r: r["tps"]) if ref_pg_runs else None
ref_settings = text("ref-pg-settings.txt").strip()


def refused(r):
    """Sends refused for overload (answered unavailable / rate_limited: not sent)."""
    codes = r.get("error_codes", {})
    return codes.get("unavailable", 0) + codes.get("rate_limited", 0)


def best_step(steps):
    ok = [s for s in steps if s["passed"]]
    return max(ok, key=lambda s: s["report"]["throughput_msgs_per_sec"]) if ok else None


def unbroken_step(steps):
    last = None
    for s in steps:
        if not s["passed"]:
            break
        last = s
    return last


def steps_table(steps):
    """Per-step table for scenario 7 and the reference: goodput, latency, refusals."""
    md.append("| target msg/s | sustained (acked) msg/s | steady ack p50 | steady ack p99 | steady e2e p99 | "
              "refused (unavailable/rate_limited) | other errors | unanswered | verified | result |")
    md.append("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for st in steps:
        r = st["report"]
        sa, se = r.get("steady_ack", r["ack"]), r.get("steady_e2e", r["e2e"])
        v = r["verification"]
        ok = v["missing"] + v["duplicates"] + v["out_of_order"] == 0
        md.append(f"| {st['rate']:.0f} | {r['throughput_msgs_per_sec']:.0f} | {sa['p50_ms']:.1f} | {sa['p99_ms']:.1f} | "
                  f"{se['p99_ms']:.1f} | {refused(r)} | {r['errors'] - refused(r)} | {r['unanswered']} | "
                  f"{'yes' if ok else 'NO'} | {'pass' if st['passed'] else 'fail: ' + st['why']} |")
    md.append("")

md = ["# Parley benchmarks", ""]
md.append("Generated by `make bench` (scripts/bench.sh → tools/loadgen, pgbench, "
          "scripts/bench_report.py). Everything runs on one machine: the five services, Postgres, "
          "Redis **and the load generator** share the same cores, so these figures are a floor for "
          "the services, not a capacity plan.")
md.append("")
md.append("| | |\n|---|---|")
for k, label in [("date", "date (UTC)"), ("commit", "commit"), ("cpu", "CPU"), ("cores", "cores"),
                 ("mem", "memory"), ("kernel", "kernel"), ("postgres", "Postgres"),
                 ("pg_settings", "Postgres settings"), ("redis", "Redis"), ("rustc", "rustc")]:
    md.append(f"| {label} | {machine.get(k, '-')} |")
md.append("| durability | " + ("**durable**: fsync, synchronous_commit and full_page_writes on (every scenario but the reference at the end)"
          if "fsync=on" in machine.get("pg_settings", "") else "**NOT durable** (fsync off)") + " |")
md.append("| build | release (`cargo build --release`), services started by scripts/up.sh as in `make up` "
          "(info logs); the load generator's users far exceed the product's per-user limits, so the bench gateway "
          "raises them (messages: 10⁹ per second, still a Redis call per send; channel creations and joins off; "
          "frames per connection 10⁶/s; messaging's member limit raised for scenario 3) |")
md.append("")
md.append("Load average (`/proc/loadavg` 1/5/15 min) before → after each scenario is given with it: "
          "other people build and test on this machine, so compare runs with similar load.")
md.append("")
md.append("Sizes (environment of scripts/bench.sh): " + ", ".join(
    f"`{k}={env(k)}`" for k in ["BENCH_CLIENTS", "BENCH_CHANNELS", "BENCH_MEMBERS", "BENCH_RATES", "BENCH_STEP_SECS",
                               "BENCH_FIXED_RATE", "BENCH_FIXED_SECS", "BENCH_FANOUT_MEMBERS",
                               "BENCH_FANOUT_MESSAGES", "BENCH_IDLE", "BENCH_HISTORY_ROWS",
                               "BENCH_HISTORY_REQUESTS", "BENCH_PGBENCH_SECS"] if env(k)) + ".")
md.append("")


def pg_background(raw):
    """Autovacuum/analyze/checkpoint events from the Postgres log of the ramp:
    [(unix time, what, elapsed s or None)]; the log line is written when the work ends."""
    import datetime
    path = os.path.join(raw, "pg-ramp.log")
    if not os.path.exists(path):
        return []
    out = []
    lines = open(path, errors="replace").read().splitlines()
    for i, l in enumerate(lines):
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:\s+(automatic (?:vacuum|analyze) of table \"[^\"]+\"|checkpoint (?:starting|complete))", l)
        if not m:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
        elapsed = None
        for nxt in lines[i + 1:i + 12]:
            e = re.search(r"elapsed: ([0-9.]+) s", nxt)
            if e:
                elapsed = float(e.group(1))
                break
            if re.match(r"\d{4}-", nxt):
                break
        out.append((t, m.group(2), elapsed))
    return out

# ---- summary
md.append("## Summary")
md.append("")
best = None
if ramp:
    ok_steps = [s for s in ramp["steps"] if s["passed"]]
    best = max(ok_steps, key=lambda s: s["report"]["throughput_msgs_per_sec"]) if ok_steps else None
# The last step of the unbroken run of passing steps from the bottom, and the step that
# broke it: a passing step above a failed one is reported, but so is the failure below it.
contig, broken = None, None
for s in (ramp["steps"] if ramp else []):
    if not s["passed"]:
        broken = s
        break
    contig = s
md.append("| scenario | figure |\n|---|---|")
if ramp:
    if best:
        md.append(f"| 1 max sustained send throughput, p99 < {ramp['p99_ms']:.0f} ms | "
                  f"**{best['report']['throughput_msgs_per_sec']:.0f} msg/s** (step {best['rate']:.0f} msg/s; "
                  f"steady ack p99 {best['report']['steady_ack']['p99_ms']:.1f} ms, e2e p99 {best['report']['steady_e2e']['p99_ms']:.1f} ms; "
                  f"first {best['report']['config']['warmup']:.0f} s after set-up: ack p99 {best['report']['ack_first']['p99_ms']:.1f} ms)"
                  + (f"; every step up to {contig['rate']:.0f} msg/s passed ({contig['report']['throughput_msgs_per_sec']:.0f} msg/s), "
                     f"the {broken['rate']:.0f} msg/s step failed ({broken['why']})"
                     if contig is not best and contig and broken else "") + " |")
    else:
        first = ramp["steps"][0] if ramp["steps"] else None
        md.append(f"| 1 max sustained send throughput, p99 < {ramp['p99_ms']:.0f} ms | **no step passed** "
                  f"(first step {first['rate']:.0f} msg/s: {first['why']}) |" if first else "| 1 | no data |")
    md.append(f"| 1 max sustained send throughput, any latency (no errors, verified) | "
              f"**{ramp.get('max_throughput_msgs_per_sec', 0):.0f} msg/s** |")
if pg_send:
    md.append(f"| 6 ceiling: pgbench, one message per transaction (the faster of two scripts), {machine.get('pg_clients', '?')} clients | "
              f"**{pg_send['tps']:.0f} tx/s** (p99 {pg_send['p99']:.1f} ms) |")
    if ramp:
        top = best["report"]["throughput_msgs_per_sec"] if best else 0.0
        maxany = max((s["report"]["throughput_msgs_per_sec"] for s in ramp["steps"]), default=0.0)
        unbroken = (f"{contig['report']['throughput_msgs_per_sec'] / pg_send['tps']:.2f} counting only the steps "
                    f"below the first failure; " if contig is not best and contig else "")
        md.append(f"| 1 ÷ 6 | **{top / pg_send['tps']:.2f}** within the latency target "
                  f"({unbroken}{maxany / pg_send['tps']:.2f} at the highest throughput reached, whatever the latency) |")
if fixed:
    md.append(f"| 2 end-to-end at {fixed['config']['rate']:.0f} msg/s | e2e p50 {fixed['e2e']['p50_ms']:.1f} ms, "
              f"p99 {fixed['e2e']['p99_ms']:.1f} ms; ack p50 {fixed['ack']['p50_ms']:.1f} ms, p99 {fixed['ack']['p99_ms']:.1f} ms |")
if fanout:
    md.append(f"| 3 fan-out to {fanout['config']['members']} connected members | last receiver p50 "
              f"{fanout['last_receive']['p50_ms']:.1f} ms, p99 {fanout['last_receive']['p99_ms']:.1f} ms, "
              f"max {fanout['last_receive']['max_ms']:.1f} ms |")
if idle:
    per = idle.get("rss_per_connection_kib")
    cpu = idle.get("cpu_held_pct")
    md.append(f"| 4 {idle['opened']} idle WebSockets | gateway RSS "
              f"{'%.1f KiB' % per if per is not None else '-'} per connection; gateway CPU while they idle "
              f"{'%.1f%% of a core' % cpu if cpu is not None else '-'} |")
if history or pg_key:
    parts = []
    if history:
        parts.append(f"gateway p50 {history['latency']['p50_ms']:.1f} ms / p99 {history['latency']['p99_ms']:.1f} ms")
    if pg_key and pg_off:
        parts.append(f"SQL keyset p50 {pg_key['p50']:.2f} ms vs OFFSET p50 {pg_off['p50']:.1f} ms "
                     f"({pg_off['p50'] / max(pg_key['p50'], 1e-9):.0f}×)")
    md.append(f"| 5 history page of 50, random position in {env('BENCH_HISTORY_ROWS') or '?'} messages | "
              + "; ".join(parts) + " |")
if hot:
    hb = best_step(hot["steps"])
    c = hot["steps"][0]["report"]["config"] if hot["steps"] else {}
    md.append(f"| 7 one hot channel, {c.get('members')} members all sending and receiving, p99 < {hot['p99_ms']:.0f} ms | "
              + (f"**{hb['report']['throughput_msgs_per_sec']:.0f} msg/s** (step {hb['rate']:.0f}; steady ack p99 "
                 f"{hb['report']['steady_ack']['p99_ms']:.1f} ms, e2e p99 {hb['report']['steady_e2e']['p99_ms']:.1f} ms)"
                 if hb else "**no step passed**") + " |")
if abuse_open or abuse_def:
    parts = []
    for name, a in [("defaults", abuse_def), ("limits raised", abuse_open)]:
        if a:
            g = a["bogus"].get("rss_growth_kib")
            parts.append(f"{name}: RSS growth after {a['bogus']['frames_sent']} made-up channel ids "
                         f"**{'%d KiB' % g if g is not None else '-'}**, calm client p99 beside a flood "
                         f"**×{a['flood']['p99_ratio']:.2f}** ({a['flood']['quiet']['p99_ms']:.2f} → "
                         f"{a['flood']['beside_flood']['p99_ms']:.2f} ms)")
    md.append("| 8 one hostile account (targets: < 1 MB, < ×2) | " + "; ".join(parts) + " |")
if ref_ramp or ref_pg:
    rb = best_step(ref_ramp["steps"]) if ref_ramp else None
    parts = []
    if rb:
        parts.append(f"1: **{rb['report']['throughput_msgs_per_sec']:.0f} msg/s** within p99 < {ref_ramp['p99_ms']:.0f} ms")
    if ref_pg:
        parts.append(f"6: **{ref_pg['tps']:.0f} tx/s**")
    if rb and ref_pg:
        parts.append(f"1 ÷ 6 = **{rb['report']['throughput_msgs_per_sec'] / ref_pg['tps']:.2f}**")
    md.append(f"| reference, durability off ({ref_settings or 'fsync off'}): CPU-bound, not a production figure | "
              + "; ".join(parts) + " |")
md.append("")

# ---- 1
if ramp:
    md.append("## 1. Max sustained send throughput through the gateway")
    md.append("")
    c = ramp["steps"][0]["report"]["config"] if ramp["steps"] else {}
    md.append(f"{c.get('clients')} WebSocket clients (one user each), {c.get('channels')} channels of "
              f"{c.get('members')} members; every member sends (round-robin, open loop at the step's rate, "
              f"{c.get('duration')} s per step) and every member's connection receives. Each step sets up new "
              f"users and channels; the first {c.get('warmup', 0)} s of its sending pays first-touch costs after "
              "that set-up and is reported apart (\"first s\" columns). A step passes when the steady-state "
              f"(after that) ack p99 and end-to-end p99 are ≤ {ramp['p99_ms']:.0f} ms, the server sustained "
              f"≥ {ramp['min_ratio'] * 100:.0f}% of the rate, there were no errors and delivery verification "
              f"passed (no loss, no duplicate, in order, at every receiver). Load: {loadavg(1)}.")
    md.append("")
    md.append("| target msg/s | sustained msg/s | steady ack p50 | steady ack p99 | steady e2e p50 | steady e2e p99 | first s ack p99 | first s e2e p99 | whole-step ack p99 | e2e max | errors (refused) | unanswered | verified | result |")
    md.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for s in ramp["steps"]:
        r = s["report"]
        sa, se = r.get("steady_ack", r["ack"]), r.get("steady_e2e", r["e2e"])
        fa, fe = r.get("ack_first", {}), r.get("e2e_first", {})
        md.append(f"| {s['rate']:.0f} | {r['throughput_msgs_per_sec']:.0f} | {sa['p50_ms']:.1f} | "
                  f"{sa['p99_ms']:.1f} | {se['p50_ms']:.1f} | {se['p99_ms']:.1f} | "
                  f"{fa.get('p99_ms', float('nan')):.1f} | {fe.get('p99_ms', float('nan')):.1f} | {r['ack']['p99_ms']:.1f} | "
                  f"{r['e2e']['max_ms']:.1f} | {r['errors']} ({refused(r)}) | {r['unanswered']} | {'yes' if r['verification']['missing'] + r['verification']['duplicates'] + r['verification']['out_of_order'] == 0 else 'NO'} | "
                  f"{'pass' if s['passed'] else 'fail: ' + s['why']} |")
    md.append("")
    cols = ["gateway", "messaging", "receipts", "notification", "presence", "redis", "postgres", "loadgen", "machine"]
    if any(s.get("cpu_us_per_msg") for s in ramp["steps"]):
        md.append("CPU time per committed message in each step (µs; the step's set-up included; postgres = "
                  "the postmaster and its backends; machine = every core's busy time):")
        md.append("")
        md.append("| target msg/s | " + " | ".join(cols) + " |")
        md.append("|---:|" + "---:|" * len(cols))
        for s in ramp["steps"]:
            c = s.get("cpu_us_per_msg") or {}
            md.append(f"| {s['rate']:.0f} | " + " | ".join(f"{c[k]:.0f}" if k in c else "-" for k in cols) + " |")
        md.append("")
    tails = [st for st in ramp["steps"] if not st["passed"] or st is best]
    if any(st["report"].get("ack_by_second") for st in tails):
        md.append("Ack p99 by second of sending (ms), for the failed steps and the best passing one:")
        md.append("")
        for st in tails:
            secs = " ".join(f"{b['p99_ms']:.0f}" for b in st["report"].get("ack_by_second", []))
            md.append(f"- {st['rate']:.0f} msg/s ({'pass' if st['passed'] else 'fail'}): {secs}")
        md.append("")
    events = pg_background(raw)
    if events:
        md.append("Postgres background work during the ramp (from its log: autovacuum lines are written "
                  "when the work ends, with how long it ran; checkpoints log their start and end), with the "
                  "step and second of sending the line fell in and that second's ack p99:")
        md.append("")
        md.append("| ended (UTC) | work | elapsed s | step msg/s | second | ack p99 that second (ms) |")
        md.append("|---|---|---:|---:|---:|---:|")
        import datetime
        for t, what, elapsed in events:
            at = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
            step, sec, p99 = "-", "-", "-"
            for st in ramp["steps"]:
                r = st["report"]
                t0 = r.get("send_started_unix")
                if t0 and t0 <= t < t0 + r["send_secs"] + 1:
                    n = int(t - t0)
                    step, sec = f"{st['rate']:.0f}", str(n)
                    p99 = next((f"{b['p99_ms']:.1f}" for b in r.get("ack_by_second", []) if b["second"] == n), "-")
            md.append(f"| {at} | {what} | {'' if elapsed is None else f'{elapsed:.2f}'} | {step} | {sec} | {p99} |")
        md.append("")

# ---- CPU per message (scenario 1) and per transaction (scenario 6)
clk = float(machine.get("clk_tck", "100") or 100)
cpu1 = cpu_delta("cpu-1-before.txt", "cpu-1-after.txt")
cpu6 = {s: cpu_delta(f"cpu-6-{s}-before.txt", f"cpu-6-{s}-after.txt") for s in ("send", "send-simple")}
if cpu1 and cpu1.get("messages", 0) > 0:
    n = cpu1["messages"]
    us = lambda ticks, count: ticks / clk / count * 1e6
    md.append("## CPU time per message")
    md.append("")
    md.append(f"Over the whole of scenario 1 ({n} messages, every step): CPU time of each process "
              "(`/proc/<pid>/stat` utime + stime; Postgres = the postmaster, its backends and its exited "
              "children) divided by the messages committed. \"load generator and rest\" is the machine's "
              "total minus the processes listed. Scenario 6 gives the same for pgbench, per transaction "
              "(one message each).")
    md.append("")
    md.append("| process | µs per message (scenario 1) |")
    md.append("|---|---:|")
    named = 0
    for k in ("gateway", "messaging", "presence", "receipts", "notification", "redis", "postgres"):
        if k in cpu1:
            named += cpu1[k]
            md.append(f"| {k} | {us(cpu1[k], n):.0f} |")
    if "machine" in cpu1:
        md.append(f"| load generator and rest | {us(cpu1['machine'] - named, n):.0f} |")
        md.append(f"| **whole machine** | **{us(cpu1['machine'], n):.0f}** |")
    md.append("")
    rows = []
    for s, d in cpu6.items():
        run = pgbench(s)
        if d and run and run["count"] > 0:
            rows.append((s, us(d.get("postgres", 0), run["count"]), us(d.get("machine", 0), run["count"])))
    if rows:
        md.append("| pgbench script | Postgres µs per transaction | whole machine µs per transaction |")
        md.append("|---|---:|---:|")
        for s, pg_us, m_us in rows:
            md.append(f"| {s} | {pg_us:.0f} | {m_us:.0f} |")
        md.append("")
        best_pg = min(r[1] for r in rows)
        suite_pg = us(cpu1.get("postgres", 0), n)
        if suite_pg > 0:
            md.append(f"Over the whole ramp (low rates, where sends are not batched, included) the suite spends "
                      f"**{suite_pg:.0f} µs** of Postgres CPU per message (messaging's writes, receipts' "
                      f"projection, notification's lookups, background loops), against **{best_pg:.0f} µs** per "
                      "one-message transaction in pgbench. Per step (section 1) shows how it falls as "
                      "concurrent sends share transactions.")
            md.append("")

# ---- 6
if pg_send:
    md.append("## 6. The database's ceiling: pgbench with the SQL of one send")
    md.append("")
    md.append(f"pgbench (`-M prepared`, {machine.get('pg_clients', '?')} clients = messaging's "
              f"`database.max_connections`, {env('BENCH_PGBENCH_SECS')} s) on a fresh database with messaging's "
              f"migrations (same schema and indexes) and {env('BENCH_CHANNELS')} channels of 2 members, as in "
              "scenario 1, one message per transaction, two ways. **send**: the exact statements messaging "
              "runs for a batch of one (`batch::Writer`): `BEGIN`; `SELECT … FROM channels WHERE id = ANY(…) "
              "ORDER BY id FOR NO KEY UPDATE`; the membership + idempotency `SELECT` over `unnest`; one "
              "statement updating the counter and inserting the message and its outbox event; `COMMIT`; then "
              "`DELETE FROM outbox WHERE id = ANY(…)` (`bench/raw/send.sql`). **send-simple**: the classic "
              "single-row statements of one send (membership `SELECT`, idempotency `SELECT`, `UPDATE channels "
              "… RETURNING`, `INSERT INTO messages`, `INSERT INTO outbox`, `COMMIT`, `DELETE`; "
              "`bench/raw/send-simple.sql`). The ceiling is the faster of the two. "
              f"Load: {loadavg(6)}.")
    md.append("")
    md.append("| | tx/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, run in (("send", pg_batch1), ("send-simple", pg_simple)):
        if run:
            mark = " (ceiling)" if run is pg_send else ""
            md.append(f"| pgbench {name}{mark} | {run['tps']:.0f} | {run['p50']:.2f} | {run['p90']:.2f} | "
                      f"{run['p99']:.2f} | {run['p999']:.2f} | {run['max']:.2f} | {run['failed']} |")
    if best:
        r = best["report"]
        sa = r.get("steady_ack", r["ack"])
        md.append(f"| scenario 1 (best passing step, steady state) | {r['throughput_msgs_per_sec']:.0f} | {sa['p50_ms']:.2f} | "
                  f"{sa['p90_ms']:.2f} | {sa['p99_ms']:.2f} | {sa['p999_ms']:.2f} | "
                  f"{sa['max_ms']:.2f} | {r['errors']} |")
        md.append("")
        md.append(f"Ratio scenario 1 ÷ pgbench: **{r['throughput_msgs_per_sec'] / pg_send['tps']:.2f}** "
                  "(scenario 1 latencies are send → `sent` ack through the gateway).")
    md.append("")

# ---- 2
def traffic_section(title, r, n, intro):
    md.append(f"## {title}")
    md.append("")
    md.append(intro + f" Load: {loadavg(n)}.")
    md.append("")
    md.append(f"sent {r['sent']}, acked {r['acked']}, errors {r['errors']}, sustained "
              f"{r['throughput_msgs_per_sec']:.0f} msg/s, {r['deliveries']} deliveries "
              f"({r['delivery_rate_per_sec']:.0f}/s). {verification(r)}.")
    md.append("")
    md.append(LAT_HEAD)
    md.append(row("send → `sent` ack", r["ack"]))
    md.append(row("send → receive (every receiver)", r["e2e"]))
    md.append(row("send → last receiver", r["last_receive"]))
    md.append("")


if fixed:
    c = fixed["config"]
    traffic_section(f"2. End-to-end latency at {c['rate']:.0f} msg/s", fixed, 2,
                    f"{c['clients']} clients, {c['channels']} channels of {c['members']}, "
                    f"{c['rate']:.0f} msg/s for {c['duration']} s.")
if fanout:
    c = fanout["config"]
    traffic_section(f"3. Fan-out: one channel, {c['members']} connected members", fanout, 3,
                    f"{c['members']} users each with one WebSocket, all members of one channel; one of them "
                    f"sends {fanout['sent']} messages at {c['rate']:.0f} msg/s. \"last receiver\" is, per "
                    "message, the time until the last of the members had it.")

# ---- 4
if idle:
    md.append(f"## 4. {idle['config']['connections']} idle WebSocket connections")
    md.append("")
    kib = lambda v: f"{v / 1024:.1f} MiB" if v is not None else "-"
    per = idle.get("rss_per_connection_kib")
    md.append(f"{idle['opened']} opened ({idle['failed']} failed{': ' + idle['first_error'] if idle.get('first_error') else ''}) "
              f"over {idle['config']['users']} users in {idle['connect_secs']:.1f} s "
              f"({idle['connects_per_sec']:.0f}/s); {idle['alive_at_end']} still open after {idle['config']['hold']:.0f} s. "
              f"Gateway RSS: {kib(idle['rss_before_kib'])} before, {kib(idle['rss_held_kib'])} holding, "
              f"{kib(idle['rss_after_close_kib'])} 2 s after closing → "
              f"**{'%.1f KiB' % per if per is not None else '-'} per connection**. "
              f"Gateway CPU while all of them sat idle: "
              f"{'%.1f%% of one core' % idle['cpu_held_pct'] if idle.get('cpu_held_pct') is not None else '-'} "
              f"(server pings every `ws.heartbeat_ms`, presence heartbeats). Load: {loadavg(4)}.")
    md.append("")

# ---- 5
if history or pg_key:
    md.append(f"## 5. History: `before=` pages of 50 in a channel of {env('BENCH_HISTORY_ROWS')} messages")
    md.append("")
    md.append("The channel is seeded once with SQL (kept for later runs). Cursors are uniform over the "
              "whole channel. The gateway figure is the full REST path (JWT, gRPC, membership check, "
              "keyset query, JSON); the SQL figures are pgbench (2 clients, 10 s) on the same data: "
              "the service's keyset query vs the same page fetched with `ORDER BY seq DESC OFFSET n LIMIT 51`. "
              f"Load: {loadavg(5)}.")
    md.append("")
    md.append("| | pages | pages/s | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|")
    if history:
        h = history["latency"]
        md.append(f"| gateway `GET …/messages?before=` (keyset) | {history['ok']} | {history['pages_per_sec']:.0f} | "
                  f"{h['p50_ms']:.2f} | {h['p90_ms']:.2f} | {h['p99_ms']:.2f} | {h['max_ms']:.2f} |")
        if history["errors"] or history["wrong_pages"]:
            md.append(f"\n**{history['errors']} errors, {history['wrong_pages']} wrong pages.**\n")
    for name, p in [("SQL keyset (`seq < $cursor`)", pg_key), ("SQL OFFSET", pg_off)]:
        if p:
            md.append(f"| {name} | {p['count']} | {p['tps']:.1f} | {p['p50']:.2f} | {p['p90']:.2f} | {p['p99']:.2f} | {p['max']:.2f} |")
    md.append("")
    for name in ["keyset", "offset"]:
        e = text(f"explain-{name}.txt").strip()
        if e:
            md.append(f"`EXPLAIN ANALYZE` ({name}, middle of the channel):\n\n```\n{e}\n```\n")

# ---- 7
if hot:
    c = hot["steps"][0]["report"]["config"] if hot["steps"] else {}
    md.append(f"## 7. One hot channel: {c.get('members')} members, all sending, all receiving")
    md.append("")
    md.append(f"One channel, {c.get('clients')} WebSocket clients (one user each), every one of them sends "
              f"(round-robin, open loop, {c.get('duration')} s per step) and receives every message. One "
              "channel's sends are serialised by its counter, so this is group commit per channel: many sends "
              "per lock hold and per WAL flush. Past saturation the ramp goes on a few steps: refused sends "
              "(`unavailable` + Retry-After, not sent) are counted, the accepted ones keep their latency. "
              f"Load: {loadavg(7)}.")
    md.append("")
    steps_table(hot["steps"])

# ---- 8
def abuse_section(name, a, intro):
    b, f = a["bogus"], a["flood"]
    kib = lambda v: f"{v / 1024:.1f} MiB" if v is not None else "-"
    md.append(f"### {name}")
    md.append("")
    md.append(intro)
    md.append("")
    md.append(f"- **Made-up channel ids:** one connection sent {b['frames_sent']} `send` frames, each to a "
              f"new random channel id; {b['answered']} answered in {b['secs']:.1f} s, by code {b['codes']}"
              + (f"; the connection was closed ({b['closed']})" if b.get("closed") else "")
              + f". Gateway RSS {kib(b['rss_before_kib'])} before (after a warm-up: four connections "
              f"with 100 such sends each and another user's burst of 1,000), {kib(b['rss_after_kib'])} "
              f"2 s after the last answer (the flooding connection still open unless closed): "
              f"**{b['rss_growth_kib'] if b.get('rss_growth_kib') is not None else '-'} KiB** (target < 1 MB).")
    md.append(f"- **A calm client beside a flood:** one ping at a time, {a['config']['calm_rate']:.0f}/s for "
              f"{a['config']['calm_secs']:.0f} s quiet, then as long again while another user's connection "
              f"writes `ping` frames as fast as its socket takes them (reading every answer, reconnecting "
              f"when closed). Calm p99 **{f['quiet']['p99_ms']:.2f} ms quiet → {f['beside_flood']['p99_ms']:.2f} ms "
              f"beside the flood: ×{f['p99_ratio']:.2f}** (target < ×2); p50 {f['quiet']['p50_ms']:.2f} → "
              f"{f['beside_flood']['p50_ms']:.2f} ms. The flooder wrote {f['flood_frames_sent']} frames "
              f"({f['flood_frames_per_sec']:.0f}/s) over {f['flood_connections']} connections "
              f"({f['flood_refused_connects']} upgrades refused); answers {f['flood_answers']}; its connections "
              f"ended {f['flood_closes']}.")
    md.append("")


if abuse_open or abuse_def:
    md.append("## 8. One hostile account")
    md.append("")
    md.append(f"Load: {loadavg(8)}.")
    md.append("")
    if abuse_def:
        abuse_section("Production defaults (a second gateway, port 8090)", abuse_def,
                      "Default `ws.*` and `rate.*` limits: 100 frames/s per connection with bursts of 200, "
                      "close (1008) after 200 refusals in 10 s, then the user's upgrades refused for "
                      "`ws.flood_ban_secs`.")
    if abuse_open:
        abuse_section("Limits raised (the bench gateway)", abuse_open,
                      "The per-connection frame rate is raised to 1,000,000/s for the load generator: nothing "
                      "throttles the flooder. Every made-up id goes through the full `send` validation (a "
                      "`GetChannel` to messaging each); the flood shows what the frame limit protects against.")

# ---- reference
if ref_ramp or ref_pg:
    md.append("## Reference: the same ramp and ceiling with durability off")
    md.append("")
    md.append(f"Postgres settings for this part only: `{ref_settings}` (ALTER SYSTEM, restored right after). "
              "Commits do not wait for the disk, so this measures CPU, not durability: a power cut "
              "would lose acknowledged messages. Each figure is against its own ceiling, measured in "
              "the same run.")
    md.append("")
    if ref_pg:
        md.append(f"pgbench ceiling, durability off: **{ref_pg['tps']:.0f} tx/s** (p99 {ref_pg['p99']:.1f} ms)"
                  + (f"; durable, above: {pg_send['tps']:.0f} tx/s." if pg_send else "."))
        md.append("")
    if ref_ramp:
        rb, ru = best_step(ref_ramp["steps"]), unbroken_step(ref_ramp["steps"])
        if rb and ref_pg:
            md.append(f"Best passing step {rb['report']['throughput_msgs_per_sec']:.0f} msg/s = "
                      f"**{rb['report']['throughput_msgs_per_sec'] / ref_pg['tps']:.2f}×** its ceiling"
                      + (f" (every step up to {ru['report']['throughput_msgs_per_sec']:.0f} msg/s passed: "
                         f"{ru['report']['throughput_msgs_per_sec'] / ref_pg['tps']:.2f}×)" if ru else "") + ".")
            md.append("")
        steps_table(ref_ramp["steps"])

# ---- plot
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    series = []
    if fixed:
        series += [(f"2: ack @ {fixed['config']['rate']:.0f}/s", fixed["ack_percentiles"]),
                   (f"2: e2e @ {fixed['config']['rate']:.0f}/s", fixed["e2e_percentiles"])]
    if best:
        series += [(f"1: e2e @ {best['rate']:.0f}/s (best step)", best["report"]["e2e_percentiles"])]
    if fanout:
        series += [(f"3: e2e fan-out {fanout['config']['members']}", fanout["e2e_percentiles"])]
    for label, pts in series:
        pts = [(ms, q) for ms, q in pts if q < 1.0]
        if pts:
            a1.plot([1 / (1 - q) for _, q in pts], [ms for ms, _ in pts], marker="o", label=label)
    a1.set_xscale("log")
    a1.set_xticks([1, 2, 10, 100, 1000, 10000])
    a1.set_xticklabels(["p0", "p50", "p90", "p99", "p99.9", "p99.99"])
    a1.set_ylabel("latency (ms)")
    a1.set_title("latency by percentile")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    if ramp and ramp["steps"]:
        xs = [s["report"]["throughput_msgs_per_sec"] for s in ramp["steps"]]
        a2.plot(xs, [s["report"].get("steady_ack", s["report"]["ack"])["p99_ms"] for s in ramp["steps"]], marker="o", label="steady ack p99")
        a2.plot(xs, [s["report"]["ack"]["p99_ms"] for s in ramp["steps"]], marker=".", linestyle=":", label="whole-step ack p99")
        a2.plot(xs, [s["report"].get("steady_e2e", s["report"]["e2e"])["p99_ms"] for s in ramp["steps"]], marker="o", label="steady e2e p99")
        a2.plot(xs, [s["report"]["e2e"]["p50_ms"] for s in ramp["steps"]], marker="o", label="e2e p50")
        a2.axhline(ramp["p99_ms"], color="red", linestyle="--", label=f"{ramp['p99_ms']:.0f} ms target")
        if pg_send:
            a2.axvline(pg_send["tps"], color="gray", linestyle=":", label=f"pgbench ceiling {pg_send['tps']:.0f} tx/s")
        a2.set_yscale("log")
        a2.set_xlabel("sustained msg/s (scenario 1 steps)")
        a2.set_ylabel("latency (ms)")
        a2.set_title("latency vs throughput")
        a2.grid(True, which="both", alpha=0.3)
        a2.legend(fontsize=8)
    fig.suptitle(f"Parley {machine.get('commit', '')} {machine.get('date', '')}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency.png"), dpi=100)
    md.append("## Plot\n\n![latency](latency.png)\n")
except ImportError:
    md.append("(no plot: python3 matplotlib is not installed — `pip install matplotlib`)\n")

notes = os.path.join(out, "NOTES.md")
if os.path.exists(notes):
    md.append(open(notes).read())

with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print(f"wrote {os.path.join(out, 'RESULTS.md')}")
