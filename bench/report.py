"""The benchmark's report: medians over rounds, ratios to bare and direct, targets, problems.

A ratio is taken within each round (gateway / bare of that round) and its median over rounds
is reported, so that drift between rounds hits both sides of every ratio alike.
"""

from __future__ import annotations

import signal
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench import Arm

MIB = 2**20


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    # rate: higher is better, ratios to bare and direct; cpu: ratio to bare's process;
    # ms: difference to bare and direct; value: the figure alone
    mode: str
    digits: int = 0
    target: str = ""
    check: Callable[[float], bool] | None = None  # on the ratio (rate, cpu), diff (ms), value


ROWS = [
    Row("req/s, 1 KB, c=64, forwarding", "rps_1k", "rate", 0, ">= 0.9x", lambda r: r >= 0.9),
    Row(
        "req/s, 1 KB, c=64, until stored",
        "stored_rps_1k",
        "rate",
        0,
        ">= 0.65x",
        lambda r: r >= 0.65,
    ),
    Row("req/s, 100 KB, c=16, forwarding", "rps_100k", "rate", 0, ">= 0.8x", lambda r: r >= 0.8),
    Row(
        "req/s, 100 KB, c=16, until stored",
        "stored_rps_100k",
        "rate",
        0,
        ">= 0.5x",
        lambda r: r >= 0.5,
    ),
    Row("latency p50, c=1 (ms)", "lat_p50", "ms", 3, "<= +0.25 ms", lambda d: d <= 0.25),
    Row("latency p99, c=1 (ms)", "lat_p99", "ms", 3),
    Row(
        "CPU us/call, 1 KB: proxy process", "proxy_cpu_1k", "cpu", 0, "<= 1.1x", lambda r: r <= 1.1
    ),
    Row(
        "CPU us/call, 1 KB: writer process", "writer_cpu_1k", "value", 0, "<= 60", lambda v: v <= 60
    ),
    Row("CPU us/call, 1 KB: all gateway processes", "all_cpu_1k", "cpu"),
    Row("CPU us/call, 1 KB: PostgreSQL backends", "pg_cpu_1k", "value"),
    Row("PostgreSQL transactions/call stored, 1 KB", "pg_xact_1k", "value", 2),
    Row("PostgreSQL rows written/call stored, 1 KB", "pg_rows_1k", "value", 1),
    Row("CPU us/call, 100 KB: proxy process", "proxy_cpu_100k", "cpu"),
    Row("CPU us/call, 100 KB: writer process", "writer_cpu_100k", "value"),
    Row("CPU us/call, 100 KB: all gateway processes", "all_cpu_100k", "cpu"),
    Row("CPU us/call, 100 KB: PostgreSQL backends", "pg_cpu_100k", "value"),
    Row("bytes stored/call, 1 KB", "bytes_1k", "value"),
    Row("bytes stored/call, 100 KB", "bytes_100k", "value"),
    Row("writer catch-up after load, 1 KB (s)", "catchup_1k", "value", 2),
    Row("writer catch-up after load, 100 KB (s)", "catchup_100k", "value", 2),
    Row("RSS idle, at start (MiB)", "rss_start_mib", "value", 1),
    Row("RSS after the 1 KB warm-up (MiB)", "rss_warm_mib", "value", 1),
    Row("RSS right after 100 KB load (MiB)", "rss_after_load_mib", "value", 1),
    Row("RSS peak while storing (MiB)", "rss_peak_mib", "value", 1),
    Row("RSS a while after load (MiB)", "rss_later_mib", "value", 1),
    Row("  that RSS / idle RSS", "rss_later_x_idle", "value", 2, "<= 1.5", lambda v: v <= 1.5),
    Row("stream TTFT p50 (ms)", "ttft_p50_ms", "ms", 3, "<= +0.5 ms", lambda d: d <= 0.5),
    Row("stream mean chunk gap (ms, upstream 5)", "gap_mean_ms", "ms", 3),
    Row(
        "RSS growth, 1,000 open streams (MiB)",
        "rss_streams_mib",
        "value",
        1,
        "<= 64",
        lambda v: v <= 64,
    ),
    Row("records dropped (/healthz)", "dropped", "value", 0, "0", lambda v: v == 0),
    Row("calls stored / calls answered", "stored_ratio", "value", 4, ">= 1", lambda v: v >= 1),
]


def median(values: Any) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def summarize(arm: Arm) -> None:
    """Medians over rounds into arm.metrics, and the figures derived from the one-off ones."""
    m = arm.metrics
    for key, by_round in arm.rounds.items():
        m[key] = median(by_round.values())
    for key in ("rss_start", "rss_warm", "rss_after_load", "rss_peak", "rss_later"):
        if m.get(key):
            m[f"{key}_mib"] = m[key] / MIB
    if m.get("rss_later") and m.get("rss_start"):
        m["rss_later_x_idle"] = m["rss_later"] / m["rss_start"]
    if "rss_streams_delta" in m:
        m["rss_streams_mib"] = m["rss_streams_delta"] / MIB
    if "recorded_calls" in m and arm.answered:
        m["stored_ratio"] = m["recorded_calls"] / arm.answered
    m["forwarded"] = arm.forwarded
    m["answered"] = arm.answered
    m["errors"] = arm.errors


def compare(arm: Arm, ref: Arm | None, key: str, diff: bool) -> float | None:
    """Median over rounds of arm / ref (or arm - ref) for the rounds both measured."""
    if ref is None or key not in arm.rounds or key not in ref.rounds:
        if diff and ref is not None and key in arm.metrics and key in ref.metrics:
            a, r = arm.metrics[key], ref.metrics[key]  # one-off figures (streams)
            return a - r if a is not None and r is not None else None
        return None
    mine, theirs = arm.rounds[key], ref.rounds[key]
    pairs = [(mine[r], theirs[r]) for r in mine if r in theirs and (diff or theirs[r])]
    return median(a - r if diff else a / r for a, r in pairs)


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def fmt_compare(row: Row, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if row.mode == "ms" else f"{value:.2f}x"


def columns(arms: list[Arm]) -> list[tuple[str, Arm, str]]:
    """The comparison columns: (header, arm, reference kind)."""
    out: list[tuple[str, Arm, str]] = []
    for arm in arms:
        if arm.kind == "bare":
            out.append(("bare/direct", arm, "direct"))
    for arm in arms:
        if arm.kind == "gateway":
            out.append((f"{arm.label}/bare", arm, "bare"))
    for arm in arms:
        if arm.kind == "gateway":
            out.append((f"{arm.label}/direct", arm, "direct"))
    return out


def table(arms: list[Arm], meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    live = [a for a in arms if not a.start_error]
    refs = {a.kind: a for a in live if a.kind in ("direct", "bare")}
    cmp_cols = columns(live)
    gateways = [a for a in live if a.kind == "gateway"]
    header = ["metric", *(a.label for a in live), *(c[0] for c in cmp_cols), "target"]
    header += [f"{g.label}?" for g in gateways]
    lines: list[list[str]] = []
    verdicts: list[dict[str, Any]] = []
    for row in ROWS:
        if all(a.metrics.get(row.key) is None for a in live):
            continue  # not measured in this mode (streams in --quick) or by these arms
        cells = [fmt(a.metrics.get(row.key), row.digits) for a in live]
        for _, arm, ref_kind in cmp_cols:
            ok_mode = row.mode in ("rate", "ms") or (row.mode == "cpu" and ref_kind == "bare")
            got = compare(arm, refs.get(ref_kind), row.key, row.mode == "ms") if ok_mode else None
            cells.append(fmt_compare(row, got))
        verdict: dict[str, Any] = {"metric": row.label, "key": row.key, "target": row.target}
        checks = []
        for gw in gateways:
            checked = (
                gw.metrics.get(row.key)
                if row.mode == "value"
                else compare(gw, refs.get("bare"), row.key, row.mode == "ms")
            )
            if row.check is None or checked is None:
                checks.append("" if row.check is None else "n/a")
                continue
            ok = row.check(checked)
            checks.append("PASS" if ok else "FAIL")
            verdict[gw.name] = {"value": checked, "pass": ok}
        verdicts.append(verdict)
        lines.append([row.label, *cells, row.target, *checks])
    return render([header, *lines]) + "\n\n" + legend(arms, meta), verdicts


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(cols: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        ).rstrip()

    return "\n".join([line(rows[0]), line(["-" * w for w in widths]), *map(line, rows[1:])])


def legend(arms: list[Arm], meta: dict[str, Any]) -> str:
    p = meta["params"]
    later = [a.metrics["rss_later_after_s"] for a in arms if "rss_later_after_s" in a.metrics]
    return "\n".join(
        [
            "x/bare, x/direct: median over rounds of that round's ratio (ms rows: difference); "
            "targets and ?-columns: gateway vs bare (issue 13).",
            f"until stored: calls answered / (first request -> every record in the database); "
            f"CPU from /proc/PID/stat over the same span, per call forwarded; "
            f"'a while after load': {min(later, default=0):.0f}-{max(later, default=0):.0f}s.",
            f"load generator: {meta['driver']}; {p['rounds']} rounds, arm order rotated; "
            f"steps c=1 {p['lat_seconds']}s, 1 KB c=64 {p['fwd_seconds']}s, "
            f"100 KB c=16 {p['big_seconds']}s.",
            f"pinning: {meta['pinning']}.",
            f"mode {meta['mode']}, {meta['cpus']} CPUs, python {meta['python']}, "
            f"aiohttp {meta['aiohttp']}, wall {meta.get('wall_s', 0):.0f}s.",
        ]
    )


def log_trouble(text: str) -> list[str]:
    """Warning/error entries of a child's log: one line each, with the exception that ended
    its traceback, if any."""
    lines = text.splitlines()
    entries: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not any(w in line for w in ("ERROR", "CRITICAL", "WARNING", "Traceback")):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (
            lines[j].startswith((" ", "\t", "Traceback", "During ", "The above"))
            or not lines[j].strip()
        ):
            j += 1
        if j < len(lines) and j > i + 1 and ":" in lines[j] and not lines[j][:4].isdigit():
            j += 1  # the exception line that ends the traceback
        last = lines[j - 1].strip() if j > i + 1 else ""
        entries.append(line.strip() + (f" -> {last}" if last else ""))
        i = j
    return entries


def problems(arms: list[Arm]) -> list[str]:
    found: list[str] = []
    for arm in arms:
        if arm.start_error:
            lines = arm.start_error.strip().splitlines()
            if len(lines) > 8:
                lines = [lines[0], "...", *lines[-6:]]
            found.append(f"{arm.name}: did not start:\n  " + "\n  ".join(lines))
            continue
        found += arm_problems(arm)
    return found


def arm_problems(arm: Arm) -> list[str]:
    m = arm.metrics
    found = [f"{arm.name}: {note}" for note in arm.notes]
    if arm.failed:
        found.append(f"{arm.name}: stopped measuring at the {arm.failed}")
    if arm.errors:
        found.append(
            f"{arm.name}: {arm.errors} failed calls; e.g. " + " | ".join(arm.error_samples[:3])
        )
    h = m.get("health", {})
    if arm.kind == "gateway" and "recorded_calls" in m:
        if m["recorded_calls"] < arm.answered:
            found.append(
                f"{arm.name}: {m['recorded_calls']} calls stored of {arm.answered} answered; "
                f"healthz: written={h.get('written_records')} dropped={h.get('dropped_records')} "
                f"queue={h.get('queue_depth')} spool={h.get('spool_bytes')}"
            )
        if m.get("dropped"):
            found.append(f"{arm.name}: {m['dropped']} records dropped")
        if h.get("database_errors"):
            found.append(
                f"{arm.name}: {h['database_errors']} database errors, last: "
                f"{h.get('last_database_error')}"
            )
    held = m.get("open_streams")
    if held and held["held_at_upstream"] < held["requested"]:
        found.append(
            f"{arm.name}: only {held['held_at_upstream']} of {held['requested']} streams were "
            f"open at the upstream at once"
        )
    if arm.proc is not None:
        if arm.proc.exit_code not in (0, None, -signal.SIGTERM):
            found.append(f"{arm.name}: exit status {arm.proc.exit_code} after SIGTERM")
        if arm.proc.stop_seconds is not None and arm.proc.stop_seconds > 10:
            found.append(f"{arm.name}: took {arm.proc.stop_seconds:.1f}s to stop")
        bad = log_trouble(arm.proc.output(limit=500_000))
        if bad:
            m["log_trouble"] = bad[:50]
            found.append(
                f"{arm.name}: {len(bad)} warning/error log entries, e.g.:\n  "
                + "\n  ".join(b[:300] for b in bad[:4])
            )
    return found
