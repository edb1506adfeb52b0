"""Targets, pass/fail checks and the markdown rendering of one benchmark run.

The targets are stated in quantities that do not depend on how fast the emulator is
(docs/benchmarks.md). The throughput ratio is reported, not checked: it measures how cheap
the emulator is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def _get(d: dict[str, Any], *path: str) -> Any:
    cur: Any = d
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _check(
    measure: str, value: float | None, unit: str, target: str, ok: Callable[[float], bool]
) -> Row:
    return {
        "measure": measure,
        "value": value,
        "unit": unit,
        "target": target,
        "pass": None if value is None else bool(ok(value)),
    }


def checks(r: dict[str, Any]) -> list[Row]:
    """Every target, with the measured value and pass/fail (None when not measured)."""
    ns, s1k, s500, mem = r["nonstream"], r["streams_1000"], r["streams_500"], r["memory"]
    added_c1 = _sub(_get(ns, "proxy", "c1", "p50_ms"), _get(ns, "direct", "c1", "p50_ms"))
    added_c5 = _sub(_get(ns, "proxy", "c5", "p50_ms"), _get(ns, "direct", "c5", "p50_ms"))
    added_c1_info = _sub(_get(ns, "proxy_info", "c1", "p50_ms"), _get(ns, "direct", "c1", "p50_ms"))
    tput = _ratio(_get(ns, "proxy", "c50", "rps"), _get(ns, "direct", "c50", "rps"))
    ev = _ratio(_get(s500, "proxy", "events_per_s"), _get(s500, "direct", "events_per_s"))
    fe99 = _ratio(
        _get(s500, "proxy", "first_event_p99_ms"), _get(s500, "direct", "first_event_p99_ms")
    )
    ttfb = _sub(_get(s1k, "proxy", "ttfb_p50_ms"), _get(s1k, "direct", "ttfb_p50_ms"))
    gap99 = _sub(
        _get(s1k, "proxy", "inter_event_p99_ms"), _get(s1k, "direct", "inter_event_p99_ms")
    )
    bad = r.get("errors_total")
    big, small = (_shape(r, k) for k in ("streams_main", "streams_burst"))
    return [
        _check(
            "CPU per proxied request, c=50 (log WARNING)",
            _get(ns, "proxy", "cpu_us_per_req"),
            "µs",
            "≤ 250 µs",
            lambda v: v <= 250,
        ),
        _check(
            "CPU per proxied request, c=50 (access log on, INFO)",
            _get(ns, "proxy_info", "cpu_us_per_req"),
            "µs",
            "≤ 250 µs",
            lambda v: v <= 250,
        ),
        _check("added p50 latency, c=1", added_c1, "ms", "≤ 0.25 ms", lambda v: v <= 0.25),
        _check(
            "added p50 latency, c=1 (access log on)",
            added_c1_info,
            "ms",
            "≤ 0.25 ms",
            lambda v: v <= 0.25,
        ),
        _check("added p50 latency, c=5", added_c5, "ms", "≤ 0.3 ms", lambda v: v <= 0.3),
        {
            "measure": "throughput c=50, proxy / direct",
            "value": tput,
            "unit": "x",
            "target": "reported only (it measures how cheap the emulator is)",
            "pass": None,
        },
        _check(
            f"{small} streams: events/s, proxy / direct", ev, "x", "≥ 0.90", lambda v: v >= 0.90
        ),
        _check(
            f"{small} streams: first-event p99, proxy / direct",
            fe99,
            "x",
            "≤ 2.0",
            lambda v: v <= 2.0,
        ),
        _check(f"{big} streams: added TTFB p50", ttfb, "ms", "≤ 1 ms", lambda v: v <= 1.0),
        _check(f"{big} streams: added inter-event p99", gap99, "ms", "≤ 2 ms", lambda v: v <= 2.0),
        _check("RSS at idle", _get(mem, "idle_mb"), "MB", "≤ 100 MB", lambda v: v <= 100),
        _check(
            "RSS growth, 100 slow readers",
            _get(mem, "slow_readers", "growth_mb"),
            "MB",
            "≤ 5 MB",
            lambda v: v <= 5,
        ),
        _check("errors, non-2xx, cut streams (all runs)", bad, "", "0", lambda v: v == 0),
    ]


def _shape(r: dict[str, Any], key: str) -> str:
    """`1,000x200`: the stream count and events of a stream run, from the config."""
    c = r["config"][key]
    return f"{c['n']:,}x{c['events']}"


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            text = f"{v:,.0f}"
        elif abs(v) >= 10:
            text = f"{v:.1f}"
        else:
            text = f"{v:.3f}".rstrip("0").rstrip(".") if v != 0 else "0"
    elif isinstance(v, int):
        text = f"{v:,}"
    else:
        text = str(v)
    if not unit:
        return text
    return text + unit if unit == "x" else f"{text} {unit}"


def _measure_rows(r: dict[str, Any]) -> list[list[str]]:
    """[measure, direct, proxy, proxy with access log, nginx, proxy vs direct] rows."""
    ns, s1k, s500, mem = r["nonstream"], r["streams_1000"], r["streams_500"], r["memory"]
    rows: list[list[str]] = []

    def add(
        label: str, section: dict[str, Any], path: tuple[str, ...], unit: str, cmp: str
    ) -> None:
        d = _get(section, "direct", *path)
        p = _get(section, "proxy", *path)
        cells = [_fmt(_get(section, k, *path), unit) for k in ("direct", "proxy", "proxy_info")]
        cells.append(_fmt(_get(section, "nginx", *path), unit))
        if cmp == "added":
            rel = _sub(p, d)
            rel_s = "-" if rel is None else f"{rel:+.3f} {unit}".rstrip()
        elif cmp == "ratio":
            rel = _ratio(p, d)
            rel_s = "-" if rel is None else f"{rel:.2f}x"
        else:
            rel_s = "-"
        rows.append([label, *cells, rel_s])

    for c in ("c1", "c5", "c50"):
        n = c[1:]
        add(f"non-streaming c={n}: p50", ns, (c, "p50_ms"), "ms", "added")
        add(f"non-streaming c={n}: p99", ns, (c, "p99_ms"), "ms", "added")
        add(f"non-streaming c={n}: req/s", ns, (c, "rps"), "", "ratio")
    add("CPU per request at c=50 (server)", ns, ("cpu_us_per_req",), "µs", "none")
    rows[-1][1] = _fmt(_get(ns, "direct", "emulator_cpu_us_per_req"), "µs") + " (emulator)"
    add("other programs' CPU during c=50 (cores)", ns, ("c50", "cpu_util", "others"), "", "none")
    for label, key in ((_shape(r, "streams_main"), "1000"), (_shape(r, "streams_burst"), "500")):
        sec = s1k if key == "1000" else s500
        add(f"{label} streams: TTFB p50", sec, ("ttfb_p50_ms",), "ms", "added")
        add(f"{label} streams: TTFB p99", sec, ("ttfb_p99_ms",), "ms", "added")
        add(f"{label} streams: first event p50", sec, ("first_event_p50_ms",), "ms", "added")
        add(f"{label} streams: first event p99", sec, ("first_event_p99_ms",), "ms", "added")
        if key == "1000":  # the 500-stream run has no per-event delay, so no gaps to compare
            add(f"{label} streams: inter-event p50", sec, ("inter_event_p50_ms",), "ms", "added")
            add(f"{label} streams: inter-event p99", sec, ("inter_event_p99_ms",), "ms", "added")
        add(f"{label} streams: events/s", sec, ("events_per_s",), "", "ratio")
        add(
            f"{label} streams: server CPU per event",
            sec,
            ("server_cpu_us_per_event",),
            "µs",
            "none",
        )
        add(
            f"{label} streams: other programs' CPU (cores)", sec, ("cpu_util", "others"), "", "none"
        )
        if key == "500":  # the unmeasured first round, upstream pool cold: reported apart
            add(f"{label} cold round: events/s", sec, ("cold_round", "events_per_s"), "", "ratio")
            add(
                f"{label} cold round: first event p99",
                sec,
                ("cold_round", "first_event_p99_ms"),
                "ms",
                "added",
            )
    slow = mem.get("slow_readers") or {}
    for label, value in (
        ("proxy RSS: idle after start", mem.get("idle_mb")),
        ("proxy RSS: peak with 1,000 streams open", mem.get("streams_1000_peak_mb")),
        ("proxy RSS: growth with 100 slow readers", slow.get("growth_mb")),
    ):
        rows.append([label, "-", _fmt(value, "MB"), "-", "-", "-"])
    rows[-1][1] = _fmt(_get(slow, "control_emulator", "growth_mb"), "MB") + " (emulator)"
    ctl = slow.get("control_emulator") or {}
    rows.append(
        [
            "slow readers: MB the server read / wrote meanwhile",
            f"{_fmt(ctl.get('server_read_mb'))} / {_fmt(ctl.get('server_written_mb'))} (emulator)",
            f"{_fmt(slow.get('server_read_mb'))} / {_fmt(slow.get('server_written_mb'))}",
            "-",
            "-",
            "-",
        ]
    )
    return rows


def conditions(r: dict[str, Any]) -> str:
    """One paragraph on how and where the numbers were taken."""
    m, c = r["machine"], r["config"]
    v = m["versions"]
    main, burst = c["streams_main"], c["streams_burst"]
    return (
        f"Measured {r.get('finished', '')} at commit {m.get('git_commit')}"
        f"{' (work tree modified)' if m.get('git_dirty') else ''} on {m['nproc']} cores "
        f"({m['cpu']}), Python "
        f"{m['python']}, uvicorn {v.get('uvicorn')}, httptools {v.get('httptools')}, uvloop "
        f"{v.get('uvloop')}; {m['wrk']}; nginx: {m['nginx'] or 'not installed'}. "
        f"{c['pinning']}. Proxy: {c['proxy_workers']} worker(s), request log "
        f"{c.get('proxy_request_log')}; the access-log column adds CLAUDE_PROXY_LOG_LEVEL=INFO. "
        f"wrk: {c['wrk_seconds']:g} s per cell in {c['wrk_slices']} slices "
        f"interleaved across targets (latency: median of slices), after a "
        f"{c['wrk_warmup_seconds']:g} s warm-up, one connection per concurrency slot. "
        f"Streams: {main['n']} x {main['events']} text deltas, {main['event_ms']} ms before each "
        f"event, started evenly over {main['ramp']:g} s; then {burst['n']} x {burst['events']} "
        f"with no delay, all started at once; {c['stream_rounds']} rounds each, order alternating, "
        f"samples pooled. Background load before the run (1.0 = a core): "
        f"{r.get('background_load_before')}."
    )


def notes(r: dict[str, Any]) -> list[str]:
    """Things a reader of the numbers must know: missing access log, a busy machine, errors."""
    out: list[str] = []
    ns = r.get("nonstream", {})
    info = ns.get("proxy_info", {})
    if info and not info.get("access_log_lines"):
        out.append(
            "The proxy run with CLAUDE_PROXY_LOG_LEVEL=INFO wrote no access-log lines, so its "
            "column does not show what the access log costs."
        )
    worst: tuple[float, str] = (0.0, "")
    for label, cells in ns.items():
        for c in ("c1", "c5", "c50"):
            v = _get(cells, c, "cpu_util", "others") or 0.0
            worst = max(worst, (v, f"{label} {c}"))
    for sec, cfg in (("streams_1000", "streams_main"), ("streams_500", "streams_burst")):
        for label, res in r.get(sec, {}).items():
            v = _get(res, "cpu_util", "others") or 0.0
            worst = max(worst, (v, f"{label} {_shape(r, cfg)} streams"))
    if worst[0] > 0.15:
        out.append(
            f"Other programs were busy during the run (up to {worst[0]:.2f} of a core, during "
            f"{worst[1]}): numbers from those cells are less trustworthy."
        )
    if r.get("errors"):
        out.append(f"Errors: {r['errors']}.")
    return out


def markdown(r: dict[str, Any]) -> str:
    """Two ready-to-paste tables: the measurements, then the targets with pass/fail."""
    out = [
        conditions(r),
        *[f"\n**Note:** {n}" for n in notes(r)],
        "",
        "| measure | direct | proxy | proxy, access log on | nginx | proxy vs direct |",
        "|---|---|---|---|---|---|",
    ]
    out += ["| " + " | ".join(row) + " |" for row in _measure_rows(r)]
    out += ["", "| target | measured | target | result |", "|---|---|---|---|"]
    for c in r["checks"]:
        res = "n/a" if c["pass"] is None else ("pass" if c["pass"] else "**FAIL**")
        out.append(f"| {c['measure']} | {_fmt(c['value'], c['unit'])} | {c['target']} | {res} |")
    out += _baseline_rows(r["nonstream"])
    return "\n".join(out) + "\n"


def _baseline_rows(ns: dict[str, Any]) -> list[str]:
    """With `--baseline`: CPU per request of this build against the other, same run."""
    if "proxy_baseline" not in ns:
        return []
    out = [
        "",
        "| CPU per request (worker + writer process) | --baseline | this build | change |",
        "|---|---|---|---|",
    ]
    for c in ("c1", "c5", "c50"):
        base = _get(ns, "proxy_baseline", c, "server_cpu_us_per_req")
        this = _get(ns, "proxy", c, "server_cpu_us_per_req")
        change = _ratio(this, base)
        change_s = "-" if change is None else f"{(change - 1) * 100:+.1f} %"
        out.append(f"| c={c[1:]} | {_fmt(base, 'µs')} | {_fmt(this, 'µs')} | {change_s} |")
    return out
