#!/usr/bin/env python3
"""Merges the load tool's per-scenario JSON reports into one results file and a markdown summary.

Usage: summarize.py --json OUT.json --markdown OUT.md [--quick 0|1] REPORT.json...
"""
import argparse
import json
import os
import platform
import subprocess


def command_output(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except Exception:
        return None


def machine():
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = next((line.split(":", 1)[1].strip() for line in f if line.startswith("MemTotal")), None)
    except OSError:
        pass
    nginx = command_output(["sh", "-c", "nginx -v 2>&1"])
    postgres = command_output(["sh", "-c", "for p in /usr/lib/postgresql/*/bin/postgres; do \"$p\" --version; done | tail -1"])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "swift": (command_output(["swift", "--version"]) or "").split("\n")[0] or None,
        "nginx": nginx,
        "postgres": postgres,
        "open_files_limit": command_output(["sh", "-c", "ulimit -n"]),
    }


def fmt(value, pattern="{:.1f}"):
    return "–" if value is None else pattern.format(value)


def latency(summary):
    if not summary or not summary.get("count"):
        return "–"
    return "{:.1f} / {:.1f} / {:.1f} / {:.1f}".format(summary["p50_ms"], summary["p95_ms"], summary["p99_ms"], summary["max_ms"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--quick", default="0")
    parser.add_argument("reports", nargs="*")
    args = parser.parse_args()

    runs = []
    order = {"realtime": 0, "nchan": 1, "writes": 2, "floor": 3}
    for path in args.reports:
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as error:
            runs.append({"name": os.path.basename(path), "mode": "failed", "error": str(error)})
    runs.sort(key=lambda run: (run.get("mode") == "floor", run.get("name") or "", order.get(run.get("mode"), 3)))
    result = {"quick": args.quick == "1", "machine": machine(), "runs": runs}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")

    lines = []
    m = result["machine"]
    lines.append("# Benchmark results" + (" (quick run: small and short, not the target figures)" if result["quick"] else ""))
    lines.append("")
    lines.append(f"Machine: {m['cpus']} × {m['cpu_model']}, {m['memory']}, Linux {m['kernel']}; {m['swift']}; {m['nginx']}; {m['postgres']}.")
    lines.append("")
    streamed = [run for run in runs if run.get("mode") != "writes"]
    table = lines if streamed else []
    table.append("Delays in ms as p50 / p95 / p99 / max. Realtime: commit timestamp → receipt, and write request sent → receipt; "
                 "nchan: publish sent → receipt (both columns); floor: NOTIFY statement → LISTEN receipt. Realtime writes are "
                 "editors' REST writes; expected deliveries come from the acknowledged writes, never from the server's log.")
    table.append("")
    table.append("| scenario | server | subscribers / channels | writes/s asked → done | deliveries/s | commit → receipt | send → receipt "
                 "| expected | delivered | missing | dup | misdelivered | unmatched | withheld (correctly) | disconnects "
                 "| neg. controls refused | KiB / idle sub | server µs / delivery | tool µs / frame |")
    table.append("|" + "---|" * 19)
    writes_only = []
    for run in runs:
        if run.get("mode") == "failed":
            lines.append(f"| {run['name']} | failed: {run['error']} |" + " |" * 17)
            continue
        if run.get("mode") == "writes":
            writes_only.append(run)
            continue
        s = run["settings"]
        d = run.get("delivery") or {}
        mem = run.get("memory") or {}
        cpu = run.get("cpu") or {}
        neg = f"{d.get('negative_controls_refused', 0)}/{d.get('negative_controls', 0)}" if d.get("negative_controls") else "–"
        per_sub = mem.get("per_idle_subscriber_bytes")
        send = run.get("send_to_receipt") or (run.get("origin_to_receipt") if run.get("mode") == "nchan" else None)
        withheld = f"{d['withheld']} ({d.get('withheld_correctly', 0)})" if "withheld" in d else "–"
        lines.append(
            f"| {run['name']} | {run['mode']} | {s['subscribers']} / {s['channels']} | {s['writes_per_second']:g} → {run['writes']['per_second']:.1f} "
            f"| {fmt(run.get('deliveries_per_second'), '{:.0f}')} | {latency(run.get('origin_to_receipt'))} | {latency(send)} "
            f"| {d.get('expected', '–')} | {d.get('delivered', '–')} | {d.get('missing', '–')} | {d.get('duplicated', '–')} "
            f"| {d.get('misdelivered', '–')} | {d.get('unmatched', '–')} | {withheld} | {d.get('disconnects', '–')} | {neg} "
            f"| {fmt(per_sub / 1024 if per_sub is not None else None)} | {fmt(cpu.get('server_us_per_delivery'))} "
            f"| {fmt(cpu.get('tool_us_per_frame'))} |"
        )
    table.append("")
    if writes_only:
        lines.append("Writes only (W: editors' task writes through REST, closed loop, no subscribers; CPU per acknowledged write, "
                     "over the writes and the feed catching up):")
        lines.append("")
        lines.append("| scenario | writers | writes/s | send → answer | failed | server µs / write | PostgreSQL µs / write | tool µs / write |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for run in writes_only:
            w, cpu = run["writes"], run.get("cpu") or {}
            lines.append(
                f"| {run['name']} | {run['settings'].get('writers')} | {w['per_second']:.0f} | {latency(w.get('latency'))} | {w['failed']} "
                f"| {fmt(cpu.get('server_us_per_write'))} | {fmt(cpu.get('database_us_per_write'))} | {fmt(cpu.get('tool_us_per_write'))} |"
            )
        lines.append("")
    lines.append("CPU split of each run's window (seconds of CPU, and share of their sum; the server is nginx for nchan):")
    lines.append("")
    lines.append("| scenario | server | window s | server s | PostgreSQL s | tool s (receiving loops) | tool µs / frame (receiving loops) |")
    lines.append("|---|---|---|---|---|---|---|")
    for run in runs:
        cpu = run.get("cpu")
        if not cpu or run.get("mode") == "floor":
            continue
        parts = [cpu.get("server_s"), cpu.get("database_s"), cpu.get("tool_s")]
        total = sum(p for p in parts if p) or 0

        def share(value):
            return "–" if value is None else f"{value:.1f} ({value * 100 / total:.0f} %)" if total else f"{value:.1f}"

        lines.append(
            f"| {run['name']} | {run['mode']} | {fmt(cpu.get('window_s'))} | {share(cpu.get('server_s'))} | {share(cpu.get('database_s'))} "
            f"| {share(cpu.get('tool_s'))} ({fmt(cpu.get('tool_receive_s'), '{:.1f}')}) "
            f"| {fmt(cpu.get('tool_us_per_frame'))} ({fmt(cpu.get('tool_receive_us_per_frame'))}) |"
        )
    lines.append("")
    by_name = {}
    for run in runs:
        by_name.setdefault(run.get("name"), {})[run.get("mode")] = run
    ratios = []
    for name, modes in sorted(by_name.items()):
        ours, peer = modes.get("realtime"), modes.get("nchan")
        if not ours or not peer:
            continue

        def ratio(a, b):
            return "–" if a is None or b in (None, 0) else f"{a / b:.2f}×"

        ours_send = ours.get("send_to_receipt") or ours["origin_to_receipt"]
        ratios.append(
            f"| {name} | {ratio(ours_send.get('p50_ms'), peer['origin_to_receipt'].get('p50_ms'))} "
            f"| {ratio(ours_send.get('p95_ms'), peer['origin_to_receipt'].get('p95_ms'))} "
            f"| {ratio(ours.get('deliveries_per_second'), peer.get('deliveries_per_second'))} "
            f"| {ratio(ours['cpu'].get('server_us_per_delivery'), peer['cpu'].get('server_us_per_delivery'))} "
            f"| {ratio((ours.get('memory') or {}).get('per_idle_subscriber_bytes'), (peer.get('memory') or {}).get('per_idle_subscriber_bytes'))} |"
        )
    if ratios:
        lines.append("Realtime over nchan (same subscribers, channels and rate; targets: CPU per delivery ≤ 1.5×, memory per idle subscriber ≤ 2×):")
        lines.append("")
        lines.append("| scenario | p50 delay (send → receipt) | p95 delay | deliveries/s | CPU per delivery | memory per idle subscriber |")
        lines.append("|---|---|---|---|---|---|")
        lines.extend(ratios)
        lines.append("")
    for run in runs:
        feed = run.get("feed")
        d = run.get("delivery") or {}
        notes = list(run.get("notes") or [])
        if feed:
            notes.append(f"feed: {feed['events']} events, writes in feed {feed['writes_in_feed']}, missing from feed "
                         f"{feed['writes_missing_from_feed']}, unmatched events {feed['unmatched_events']}")
        if d.get("subscribers_open"):
            window = (run.get("cpu") or {}).get("window_s") or 0
            notes.append(f"disconnect rate {d.get('disconnects', 0) / d['subscribers_open']:.2%} of {d['subscribers_open']} streams "
                         f"over the {window:.0f} s window")
        if d.get("disconnect_reasons"):
            notes.append(f"disconnect reasons: {d['disconnect_reasons']}")
        if d.get("subscribers_by_kind"):
            notes.append(f"subscribers: {d['subscribers_by_kind']}")
        if d.get("of_unknown_writes"):
            notes.append(f"frames of writes with unknown outcome (no answer or 5xx): {d['of_unknown_writes']}")
        if d.get("control_events"):
            notes.append(f"control events: {d['control_events']}")
        if run.get("writes", {}).get("failure_statuses"):
            notes.append(f"failed writes by status: {run['writes']['failure_statuses']}")
        if notes:
            lines.append(f"- **{run.get('name')} {run.get('mode')}**: " + "; ".join(notes))
    with open(args.markdown, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
