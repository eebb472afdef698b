"""Charts drawn on the server as inline SVG (no script, nothing fetched): a line over time and
a histogram. Every piece of text in them is escaped."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

__all__ = ["histogram", "line", "seconds"]

W, H = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 28


def _frame(title: str, body: str) -> SafeString:
    return mark_safe(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rustcache-chart" role="img" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}"><title>{escape(title)}</title>'
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff" stroke="#ccc"/>{body}</svg>'
    )


def _empty(title: str, why: str) -> SafeString:
    return _frame(
        title, f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#666" font-size="13">{escape(why)}</text>'
    )


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def line(
    title: str, points: list[tuple[float, float]], fmt: Callable[[float], str], top: float | None = None
) -> SafeString:
    """A line of (unix time, value) points; the y axis from 0 to `top` (or the largest value)."""
    if len(points) < 2:
        return _empty(title, "Not enough samples yet: the page samples every interval while it is served.")
    t0, t1 = points[0][0], points[-1][0]
    high = top if top is not None else max(v for _, v in points) or 1.0
    span = (t1 - t0) or 1.0
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def xy(t: float, v: float) -> str:
        return f"{LEFT + (t - t0) / span * plot_w:.1f},{TOP + plot_h - min(v, high) / high * plot_h:.1f}"

    body = [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{W - RIGHT}" y2="{TOP + plot_h}" stroke="#999"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#999"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{W - RIGHT}" y2="{TOP}" stroke="#eee"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" font-size="11">{escape(fmt(high))}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" font-size="11">{escape(fmt(0.0))}</text>',
        f'<text x="{LEFT}" y="{H - 8}" font-size="11">{escape(_clock(t0))}</text>',
        f'<text x="{W - RIGHT}" y="{H - 8}" text-anchor="end" font-size="11">{escape(_clock(t1))}</text>',
        f'<polyline fill="none" stroke="#417690" stroke-width="2" points="{" ".join(xy(t, v) for t, v in points)}"/>',
    ]
    last = points[-1][1]
    body.append(
        f'<text x="{W - RIGHT}" y="{TOP + 12}" text-anchor="end" font-size="12" fill="#417690">'
        f"now {escape(fmt(last))}</text>"
    )
    return _frame(title, "".join(body))


def seconds(s: float) -> str:
    """A duration as people read it: 850 ns, 64 µs, 1.5 ms, 2.0 s."""
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.1f} s"


def histogram(title: str, buckets: list[tuple[float, int]]) -> SafeString:
    """Bars of (bucket's upper bound in seconds, calls) for the buckets that hold any."""
    if not buckets:
        return _empty(title, "No timed calls yet.")
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    most = max(n for _, n in buckets) or 1
    width = plot_w / len(buckets)
    body = [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{W - RIGHT}" y2="{TOP + plot_h}" stroke="#999"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" font-size="11">{most}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    label_every = max(1, len(buckets) // 8)
    for i, (upper, n) in enumerate(buckets):
        h = n / most * plot_h
        x = LEFT + i * width
        body.append(
            f'<rect x="{x + 1:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(width - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#79aec8">'
            f"<title>{escape(f'≤ {seconds(upper)}: {n} calls')}</title></rect>"
        )
        if i % label_every == 0:
            body.append(
                f'<text x="{x + width / 2:.1f}" y="{H - 8}" text-anchor="middle" font-size="10">'
                f"{escape('≤' + seconds(upper))}</text>"
            )
    return _frame(title, "".join(body))
