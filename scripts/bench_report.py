#!/usr/bin/env python3
"""Turns scripts/bench results (JSON lines from herald-load) into docs/benchmarks.md.

usage: bench_report.py RESULTS.jsonl OUTPUT.md COMMAND
Exits 1 when any run lost messages, failed connections or did not finish, so that the
CI profile fails loudly; the figures themselves are never asserted.
"""
import datetime
import json
import os
import platform
import subprocess
import sys

results_path, output_path, command = sys.argv[1], sys.argv[2], sys.argv[3]
runs = [json.loads(line) for line in open(results_path) if line.strip()]


def sh(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def mem_total():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


def key(run):
    return (run["scenario"], run.get("args", ""))


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def aggregate(group):
    """One row from the rounds of one (scenario, args, target): medians of the figures,
    sums of the counts, the CPU spread kept for display."""
    good = [run for run in group if "error" not in run]
    if not good:
        return group[0]
    if good[0]["scenario"] == "connect" and len(good) > 1:
        # Each round is a fresh process: medians of the figures, every failure counted.
        row = dict(good[0])
        row["connect"] = {key: median([run["connect"][key] for run in good]) for key in good[0]["connect"]}
        row["failed"] = sum(run["failed"] for run in good)
        for key in ("marginal_bytes_per_connection", "rss_held_bytes"):
            values = [run[key] for run in good if run.get(key) is not None]
            row[key] = median(values) if values else None
        row["p99_spread"] = (min(run["connect"]["p99_ms"] for run in good), max(run["connect"]["p99_ms"] for run in good))
        row["rounds"] = len(group)
        row["cpu_spread"] = None
        row["failed_rounds"] = len(group) - len(good)
        return row
    if good[0]["scenario"] == "connect" or len(good) == 1:
        row = dict(good[0])
        row["rounds"] = len(group)
        row["cpu_spread"] = None
        row["failed_rounds"] = len(group) - len(good)
        return row
    row = dict(good[0])
    for key in ("delivered", "expected", "lost", "failed_publishes", "duplicates", "refused", "messages"):
        row[key] = sum(run.get(key, 0) for run in good)
    for key in ("deliveries_per_second", "server_cpu_us_per_delivery", "loadgen_cpu_us_per_delivery"):
        row[key] = median([run[key] for run in good])
    for name in ("latency", "typing_latency"):
        if all(name in run for run in good):
            row[name] = {key: median([run[name][key] for run in good]) for key in good[0][name]}
    row["cpu"] = dict(good[0]["cpu"], machine_busy=median([run["cpu"]["machine_busy"] for run in good]))
    cpus = [run["server_cpu_us_per_delivery"] for run in good]
    row["cpu_spread"] = (min(cpus), max(cpus))
    row["rounds"] = len(group)
    row["failed_rounds"] = len(group) - len(good)
    return row


def find(scenario, args, label):
    group = [run for run in runs if run.get("scenario") == scenario and run.get("args") == args and run.get("label") == label]
    return aggregate(group) if group else None


def ratio(a, b):
    if a is None or b in (None, 0):
        return "n/a"
    return f"{a / b:.2f}×"


def kib(value):
    return "n/a" if value is None else f"{value / 1024:.1f}"


problems = []
lines = []
out = lines.append
out("# Benchmarks")
out("")
out(f"Produced by `{command}` on {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.")
out("Every row of a table was measured in the same run, one target after another, on the same machine; quote the ratios, not the absolute figures (the machine is shared and noisy).")
out("")
out("| | |")
out("|---|---|")
out(f"| machine | {os.cpu_count()} cores, {cpu_model()}, {mem_total()} |")
out(f"| kernel | {platform.release()} |")
out(f"| rustc | {sh('rustc', '--version')} |")
out(f"| node | {sh('node', '--version')} |")
out(f"| herald | {sh('git', 'rev-parse', '--short', 'HEAD')} |")
out("")
out("Targets: **herald-ws** (Herald, plain WebSocket `/ws`), **herald-sio** (Herald, Socket.IO over websocket), **reference-sio** / **reference-ws** (Node.js: socket.io 4 + ws + jsonwebtoken, `bench/reference/server.mjs`), **floor** (`herald-floor`: accept, check the token, write one pre-built frame per subscriber, nothing else), **sio-baseline** (connect only: socketioxide with nothing of Herald's, to show the library's share).")
out("The floor takes WebSocket connections on a bare TCP listener (tungstenite's handshake, no HTTP framework) and publishes on a second port; both it and Herald use tungstenite with the same buffer sizes.")
out("Server CPU per delivery is the server process's user+system CPU over the measured window divided by the deliveries; load-generator CPU and whole-machine busy fraction are shown so that a machine-bound run is visible.")
out("")

connect_labels = []
for run in runs:
    if run.get("scenario") == "connect" and run["label"] not in connect_labels:
        connect_labels.append(run["label"])
connect_runs = [find("connect", next(r["args"] for r in runs if r.get("scenario") == "connect" and r["label"] == label), label) for label in connect_labels]
if connect_runs:
    out("## connect")
    out("")
    out(f"Arguments: `{connect_runs[0].get('args', '')}`")
    out("")
    connect_rounds = max(run.get("rounds", 1) for run in connect_runs)
    if connect_rounds > 1:
        out(f"Medians over {connect_rounds} rounds, each on a fresh server process; connected is per round, failed sums the rounds; the p99 column shows the median and, in brackets, the range.")
        out("")
    out("| target | connected | failed | connect p50 ms | p99 ms | max ms | RSS held MiB | marginal KiB/conn |")
    out("|---|---|---|---|---|---|---|---|")
    for run in connect_runs:
        if "error" in run:
            out(f"| {run['label']} | error: {run['error']} | | | | | | |")
            problems.append(f"{run['label']} connect: {run['error']}")
            continue
        c = run["connect"]
        held = run.get("rss_held_bytes")
        spread = run.get("p99_spread")
        p99_text = f"{c['p99_ms']:.2f}" + (f" [{spread[0]:.1f}–{spread[1]:.1f}]" if spread else "")
        out(f"| {run['label']} | {run['connected']} | {run['failed']} {run['failures'] or ''} | {c['p50_ms']:.2f} | {p99_text} | {c['max_ms']:.1f} | {'n/a' if held is None else f'{held / 2**20:.1f}'} | {kib(run.get('marginal_bytes_per_connection'))} |")
        if run["failed"]:
            problems.append(f"{run['label']} connect: {run['failed']} failed")
    out("")

def limited_by(run):
    """What bounded a row: the machine when both cores were nearly busy (server and load
    generator share them), else the offered rate when one was set, else the server."""
    if run["cpu"]["machine_busy"] >= 0.9:
        return "machine"
    if run.get("msg_rate"):
        return "offered rate"
    return "server"


seen = []
for run in runs:
    if run.get("scenario") in ("fanout", "unicast", "churn") and key(run) not in seen:
        seen.append(key(run))

for scenario, args in seen:
    out(f"## {scenario}")
    out("")
    out(f"Arguments: `{args}`")
    out("")
    rounds = max((find(scenario, args, label) or {}).get("rounds", 1) for label in ("floor", "herald-ws", "herald-sio", "reference-ws", "reference-sio"))
    if rounds > 1:
        out(f"Medians over {rounds} rounds (targets interleaved in each round); delivered/expected sum all rounds; the server CPU column shows the median and, in brackets, the range.")
        out("")
    out("| target | delivered / expected | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | server µs/delivery | ×floor | ×reference | loadgen µs/delivery | machine busy | limited by |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    floor = find(scenario, args, "floor")
    for label in ("floor", "herald-ws", "herald-sio", "reference-ws", "reference-sio"):
        run = find(scenario, args, label)
        if run is None:
            continue
        if "error" in run:
            out(f"| {label} | error: {run['error']} | | | | | | | | | | | |")
            problems.append(f"{label} {scenario} {args}: {run['error']}")
            continue
        reference_label = {"herald-ws": "reference-ws", "herald-sio": "reference-sio"}.get(label)
        reference = find(scenario, args, reference_label) if reference_label else None
        cpu = run["server_cpu_us_per_delivery"]
        spread = run.get("cpu_spread")
        cpu_text = f"{cpu:.2f}" + (f" [{spread[0]:.2f}–{spread[1]:.2f}]" if spread else "")
        floor_cpu = floor["server_cpu_us_per_delivery"] if floor and "error" not in floor else None
        reference_cpu = reference["server_cpu_us_per_delivery"] if reference and "error" not in reference else None
        lat = run["latency"]
        extra = ""
        if scenario == "churn":
            extra = f" (churned {run.get('churned_connections')}, failures {run.get('churn_failures') or 0}, RSS {kib(run.get('rss_baseline_bytes'))} → {kib(run.get('rss_after_bytes'))} KiB)"
        out(f"| {label} | {run['delivered']} / {run['expected']}{extra} | {run['deliveries_per_second']:.0f} | {lat['p50_us'] / 1000:.2f} | {lat['p99_us'] / 1000:.2f} | {lat['p999_us'] / 1000:.2f} | {lat['max_us'] / 1000:.1f} | {cpu_text} | {ratio(cpu, floor_cpu) if label != 'floor' else ''} | {ratio(cpu, reference_cpu) if reference_cpu else ''} | {run['loadgen_cpu_us_per_delivery']:.2f} | {run['cpu']['machine_busy'] * 100:.0f}% | {limited_by(run)} |")
        if run["lost"] or run["failed_publishes"]:
            problems.append(f"{label} {scenario} {args}: lost {run['lost']}, failed publishes {run['failed_publishes']}")
        if run.get("failed_rounds"):
            problems.append(f"{label} {scenario} {args}: {run['failed_rounds']} round(s) failed")
    out("")

# The notification inbox (issue 4): Herald only, on SQLite and on PostgreSQL.
inbox_args = next((run.get("args") for run in runs if run.get("scenario") == "inbox"), None)
inbox_rows = []
if inbox_args is not None:
    out("## inbox")
    out("")
    out(f"Arguments: `{inbox_args}`; each notification is created with `POST /api/notifications` for one random connected user, stored, then pushed (`notification:new`) with the user's unread count.")
    out("Latency is from the request being sent to the device receiving the notification.")
    out("")
    out("| target | store | delivered / expected | notifications/s | p50 ms | p99 ms | p99.9 ms | max ms | server µs/notification | machine busy |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    for label, store in (("herald-ws", "SQLite"), ("herald-pg-ws", "PostgreSQL")):
        run = find("inbox", inbox_args, label)
        if run is None:
            continue
        if "error" in run:
            out(f"| {label} | {store} | error: {run['error']} | | | | | | | |")
            problems.append(f"{label} inbox {inbox_args}: {run['error']}")
            continue
        lat = run["latency"]
        out(f"| {label} | {store} | {run['delivered']} / {run['expected']} | {run['deliveries_per_second']:.0f} | {lat['p50_us'] / 1000:.2f} | {lat['p99_us'] / 1000:.2f} | {lat['p999_us'] / 1000:.2f} | {lat['max_us'] / 1000:.1f} | {run['server_cpu_us_per_delivery']:.1f} | {run['cpu']['machine_busy'] * 100:.0f}% |")
        inbox_rows.append((store, run))
        if run["lost"] or run["failed_publishes"]:
            problems.append(f"{label} inbox {inbox_args}: lost {run['lost']}, failed publishes {run['failed_publishes']}")
    out("")

# Conversations (issue 6): Herald and the floor, users in rooms sending messages with typing on.
chat_args = []
for run in runs:
    if run.get("scenario") == "chat" and run.get("args") not in chat_args:
        chat_args.append(run.get("args"))
chat_rows = []
chat_floor = {}
if chat_args:
    out("## chat")
    out("")
    out("Each user is a plain WebSocket member of one room (rooms created with `PUT /api/conversations/{topic}`), joined with `chat:join`; every interval it sends `message:typing`, then `message:new` half a second later (stored in SQLite, then broadcast to the room, the sender's own connection included).")
    out("Latency is from the sender writing `message:new` to each member receiving it; a typing indicator is one more delivery to every member, not counted in the latency or the per-delivery figures' denominator.")
    out("The floor runs the same scenario with none of Herald's work: it joins, numbers and broadcasts (one serialisation per message, the fields of Herald's message), with no store, membership, blocking, rate limits or heartbeats; what it reaches is what this machine allows with the load generator on the same two cores.")
    out("Several sizes in one run show where the machine saturates; ×floor compares Herald with the floor at the same size, in the same rounds.")
    out("Typing p99 is the typing indicators' latency (from the sender writing `message:typing` to each member receiving it): the path of a message without the store, so the difference between the two p99s is what storing a message adds to its tail.")
    out("")
    out("| arguments | target | delivered / expected | duplicates | refused | messages/s | p50 ms | p99 ms | p99 ×floor | p99.9 ms | max ms | typing p99 ms | server µs/delivery | ×floor | loadgen µs/delivery | machine busy |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for args in chat_args:
        floor = find("chat", args, "floor")
        floor = floor if floor and "error" not in floor else None
        chat_floor[args] = floor
        for label in ("floor", "herald-ws"):
            run = find("chat", args, label)
            if run is None:
                continue
            if "error" in run:
                out(f"| `{args}` | {label} | error: {run['error']} | | | | | | | | | | | | | |")
                problems.append(f"{label} chat {args}: {run['error']}")
                continue
            lat = run["latency"]
            messages_per_second = median([r["messages_per_second"] for r in runs if r.get("scenario") == "chat" and r.get("args") == args and r.get("label") == label and "error" not in r])
            p99_ratio = ratio(lat["p99_us"], floor["latency"]["p99_us"]) if floor and label != "floor" else ""
            typing_p99 = f"{run['typing_latency']['p99_us'] / 1000:.2f}" if "typing_latency" in run else "n/a"
            cpu_ratio = ratio(run["server_cpu_us_per_delivery"], floor["server_cpu_us_per_delivery"]) if floor and label != "floor" else ""
            out(f"| `{args}` | {label} | {run['delivered']} / {run['expected']} | {run['duplicates']} | {run['refused']} | {messages_per_second:.0f} | {lat['p50_us'] / 1000:.2f} | {lat['p99_us'] / 1000:.2f} | {p99_ratio} | {lat['p999_us'] / 1000:.2f} | {lat['max_us'] / 1000:.1f} | {typing_p99} | {run['server_cpu_us_per_delivery']:.1f} | {cpu_ratio} | {run['loadgen_cpu_us_per_delivery']:.1f} | {run['cpu']['machine_busy'] * 100:.0f}% |")
            if label == "herald-ws":
                chat_rows.append((args, run))
            if run["lost"] or run["duplicates"] or run["refused"]:
                problems.append(f"{label} chat {args}: lost {run['lost']}, duplicates {run['duplicates']}, refused {run['refused']}")
    out("")

# The outbox worker (issue 7): events inserted into PostgreSQL, delivered by 1 or 2 workers.
worker_keys = []
for run in runs:
    if run.get("scenario") == "worker" and (run.get("args"), run.get("label")) not in worker_keys:
        worker_keys.append((run.get("args"), run.get("label")))
worker_rows = []
if worker_keys:
    out("## worker (outbox)")
    out("")
    out("A producer inserts `TIP` events into Herald's PostgreSQL outbox (one `INSERT … SELECT` every 10 ms at the given rate, or statements of 1,000 as fast as it can with `--rate 0`), as an application's transactions would; `herald worker` processes (label `herald-worker-N`: N of them, beside one gateway node that runs none, all on a private `redis-server`) claim them, enrich each from the `User` and `Channel` tables (100 distinct actors), store them in the inbox and push them to the user's WebSocket on the gateway.")
    out("Latency is from the insert to the device; events/s is delivered events over the run's wall time (at `--rate 0`, the sustained processing rate). Server CPU is the gateway's and the workers' together, per event.")
    out("")
    out("| target | arguments | delivered / expected | events/s | p50 ms | p99 ms | p99.9 ms | max ms | server µs/event | machine busy |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    for args, label in worker_keys:
        run = find("worker", args, label)
        if run is None:
            continue
        if "error" in run:
            out(f"| {label} | `{args}` | error: {run['error']} | | | | | | | |")
            problems.append(f"{label} worker {args}: {run['error']}")
            continue
        lat = run["latency"]
        out(f"| {label} | `{args}` | {run['delivered']} / {run['expected']} | {run['deliveries_per_second']:.0f} | {lat['p50_us'] / 1000:.2f} | {lat['p99_us'] / 1000:.2f} | {lat['p999_us'] / 1000:.2f} | {lat['max_us'] / 1000:.1f} | {run['server_cpu_us_per_delivery']:.1f} | {run['cpu']['machine_busy'] * 100:.0f}% |")
        worker_rows.append((args, label, run))
        if run["lost"]:
            problems.append(f"{label} worker {args}: lost {run['lost']}")
    out("")

# The targets, checked against this run's figures.
checks = []


def check(name, value, limit, unit=""):
    if value is None:
        checks.append((name, "n/a", limit, "not measured"))
    else:
        checks.append((name, f"{value:.2f}{unit}", f"{limit}{unit}", "met" if value <= limit else "missed"))


def cpu_ratio(scenario, args, label):
    run, floor = find(scenario, args, label), find(scenario, args, "floor")
    if not run or not floor or "error" in run or "error" in floor or not floor["server_cpu_us_per_delivery"]:
        return None
    return run["server_cpu_us_per_delivery"] / floor["server_cpu_us_per_delivery"]


def p99_ratio(scenario, args, label):
    run, floor = find(scenario, args, label), find(scenario, args, "floor")
    if not run or not floor or "error" in run or "error" in floor:
        return None
    return run["latency"]["p99_us"] / max(floor["latency"]["p99_us"], 1)


for scenario, args in seen:
    if scenario == "churn":
        continue
    check(f"herald-ws CPU/delivery ÷ floor, {scenario} {args}", cpu_ratio(scenario, args, "herald-ws"), 1.25, "×")
    check(f"herald-sio CPU/delivery ÷ floor, {scenario} {args}", cpu_ratio(scenario, args, "herald-sio"), 1.6, "×")
    check(f"herald-ws p99 ÷ floor p99, {scenario} {args}", p99_ratio(scenario, args, "herald-ws"), 1.5, "×")
    check(f"herald-sio p99 ÷ floor p99, {scenario} {args}", p99_ratio(scenario, args, "herald-sio"), 1.5, "×")
for label, limit in (("herald-ws", 4.0), ("herald-sio", 6.0)) if connect_runs else ():
    run = next((r for r in connect_runs if r.get("label") == label and "error" not in r), None)
    marginal = run.get("marginal_bytes_per_connection") if run else None
    check(f"{label} marginal memory per idle connection", None if marginal is None else marginal / 1024, limit, " KiB")
    if run:
        check(f"{label} connect p99 ({run['connected']} connections, {run['failed']} failed)", run["connect"]["p99_ms"], 10, " ms")
def check_at_least(name, value, limit, unit=""):
    checks.append((name, f"{value:.0f}{unit}", f"≥ {limit}{unit}", "met" if value >= limit else "missed"))


for store, run in inbox_rows:
    check_at_least(f"inbox notifications/s stored and delivered, {store}", run["deliveries_per_second"], 5000, "/s")
    check(f"inbox create-to-device p99, {store}", run["latency"]["p99_us"] / 1000, 50, " ms")
for args, run in chat_rows:
    if "--users 10000" in args:
        check(f"chat delivery p99, {args}", run["latency"]["p99_us"] / 1000, 20, " ms")
        floor = chat_floor.get(args)
        if floor:
            check(f"chat delivery p99 of the floor (what the machine allows), {args}", floor["latency"]["p99_us"] / 1000, 20, " ms")
for args, label, run in worker_rows:
    if label == "herald-worker-1" and "--rate 0" in args:
        check_at_least(f"outbox events/s with one worker, {args}", run["deliveries_per_second"], 5000, "/s")
    if "--rate 2000" in args:
        check(f"outbox insert-to-device p99 at 2,000 events/s, {label}", run["latency"]["p99_us"] / 1000, 100, " ms")
if checks:
    out("## Targets (issues 3, 4, 6 and 7)")
    out("")
    out("| target | measured | limit | |")
    out("|---|---|---|---|")
    for name, value, limit, verdict in checks:
        out(f"| {name} | {value} | {limit} | {verdict} |")
    out("")

if problems:
    out("## Problems in this run")
    out("")
    for problem in problems:
        out(f"- {problem}")
    out("")

with open(output_path, "w") as handle:
    handle.write("\n".join(lines))
for problem in problems:
    print(f"bench: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
