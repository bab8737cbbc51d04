"""Tables per scenario, with ratios to Web-STOMP measured in the same invocation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["render"]

REFERENCE = "stomp"
FLOOR = "floor"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _ratio(value: float | None, ref: float | None, fmt: str = "{:.2f}x") -> str:
    if value is None or not ref or ref < 0 or value < 0:
        return "-"
    return fmt.format(value / ref)


def _get(result: dict[str, Any], phase: str, key: str) -> Any:
    p = result.get(phase)
    if not p:
        return None
    if key.startswith("latency_ms."):
        return p["latency_ms"][key.split(".", 1)[1]]
    return p.get(key)


def _table(headers: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    align: list[Callable[[str, int], str]] = [
        lambda s, w: s.ljust(w),
        *[lambda s, w: s.rjust(w)] * (len(headers) - 1),
    ]
    lines = ["  ".join(align[i](h, widths[i]) for i, h in enumerate(headers))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(align[i](c, widths[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def render(title: str, results: list[dict[str, Any]]) -> str:
    """Three tables for one scenario: connections and memory, latency, throughput."""
    out = [f"== {title}"]
    by_target = {r["target"]: r for r in results}
    ref = by_target.get(REFERENCE)
    floor = by_target.get(FLOOR)
    skipped = [r for r in results if r.get("skipped") or r.get("error")]
    measured = [r for r in results if r.get("connect")]

    def ref_value(phase: str, key: str) -> float | None:
        return _get(ref, phase, key) if ref and not ref.get("skipped") else None

    if measured:
        rows = []
        ref_rss = ref["connect"]["rss_per_conn"] if ref and ref.get("connect") else None
        for r in measured:
            c = r["connect"]
            per = c["rss_per_conn"]
            rows.append(
                [
                    r["target"],
                    f"{c['ok']:,}",
                    f"{c['failed']:,}",
                    _num(c["seconds"], "{:.1f}"),
                    _num(c["rss_after"] / 2**20, "{:.0f}"),
                    _num(per / 1024 if per is not None else None, "{:.1f}"),
                    _ratio(per, ref_rss),
                ]
            )
        out.append("connections and idle memory (RSS delta / N)")
        out.append(
            _table(
                ["target", "open", "failed", "connect s", "RSS MiB", "KiB/conn", "vs STOMP"],
                rows,
            )
        )
        for phase, heading in (
            ("latency", "latency phase (fixed rate)"),
            ("throughput", "throughput phase (as fast as confirms allow)"),
        ):
            rows = []
            ref_rate = ref_value(phase, "deliveries_per_s")
            ref_cpu = ref_value(phase, "server_cpu_s_per_million")
            floor_rate = _get(floor, phase, "deliveries_per_s") if floor else None
            for r in measured:
                p = r.get(phase)
                if not p:
                    continue
                offered = p["offered_messages_per_s"]
                per_topic = r["n"] / r["topics"]
                rows.append(
                    [
                        r["target"],
                        _num(offered * per_topic if offered else None),
                        _num(p["deliveries_per_s"]),
                        _ratio(p["deliveries_per_s"], ref_rate),
                        _ratio(p["deliveries_per_s"], floor_rate, "{:.0%}")
                        if r["target"] != FLOOR
                        else "",
                        _num(p["latency_ms"]["p50"], "{:.1f}"),
                        _num(p["latency_ms"]["p99"], "{:.1f}"),
                        _num(p["latency_ms"]["max"], "{:.0f}"),
                        f"{p['lost']:,}",
                        _num(p["server_cpu_s_per_million"], "{:.1f}"),
                        _ratio(p["server_cpu_s_per_million"], ref_cpu),
                        _num(
                            1e6 / p["server_cpu_s_per_million"]
                            if p["server_cpu_s_per_million"]
                            else None
                        ),
                        _num(
                            p["server_core_share"] * 100 if p["server_core_share"] else None,
                            "{:.0f}%",
                        ),
                        _num(p["broker_cpu_s_per_million"], "{:.1f}"),
                        _num(
                            p["loadgen_core_share"] * 100 if p["loadgen_core_share"] else None,
                            "{:.0f}%",
                        ),
                        _num(p.get("others_cores"), "{:.2f}"),
                    ]
                )
            out.append(heading)
            out.append(
                _table(
                    [
                        "target",
                        "offered/s",
                        "deliv/s",
                        "vs STOMP",
                        "of floor",
                        "p50 ms",
                        "p99 ms",
                        "max ms",
                        "lost",
                        "CPU s/M",
                        "vs STOMP",
                        "per core",
                        "server",
                        "broker s/M",
                        "loadgen",
                        "others",
                    ],
                    rows,
                )
            )
    for r in skipped:
        out.append(f"{r['target']}: {r.get('skipped') or r.get('error')}")
    return "\n".join(out)
