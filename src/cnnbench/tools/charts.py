"""Charts as inline SVG text: grouped bars (error bars, a note above each bar, reference lines) and lines
over time (shaded spans). report.py puts them into one HTML file.

Written here rather than with matplotlib: the report must open offline and stay small, cnnbench has no
plotting dependency to install on GPU servers, and each drawn value is an element of class `mark` that the
page's own check (and the browser test) can count, a value per bar, a line per series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

# Okabe and Ito's colour-blind-safe palette, the blue first.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
FONT = 12
LEFT, RIGHT, TOP = 64, 16, 40  # margins: y tick labels, the last bar, the title and legend
MAX_DOTS = 60  # a line of more points is drawn without a dot on each


@dataclass
class Bars:
    """One series of a bar chart: a value per group (None: no bar), optional standard errors and notes."""

    name: str
    values: list[float | None]
    errors: list[float | None] | None = None
    notes: list[str | None] | None = None


@dataclass
class Line:
    name: str
    xs: list[float]
    ys: list[float]


@dataclass
class Axis:
    low: float
    high: float
    ticks: list[float] = field(default_factory=list)


def nice_axis(low: float, high: float, count: int = 5) -> Axis:
    """An axis from `low` to above `high` with round ticks (steps of 1, 2 or 5 x 10^k)."""
    span = (high - low) or abs(high) or 1.0
    raw = span / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw) if s >= raw else math.inf)
    start = math.floor(low / step) * step
    ticks = [start + i * step for i in range(int(math.ceil((high - start) / step)) + 1)]
    return Axis(ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + step, ticks)


def number(value: float) -> str:
    """A tick or note label: 3 significant digits, no exponent below a million."""
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _frame(width: int, height: int, title: str, y: Axis, unit: str, plot_bottom: float, to_y) -> list[str]:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart-svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="{FONT}">',
             f'<text x="{LEFT}" y="16" font-weight="bold" font-size="{FONT + 2}">{escape(title)}</text>',
             f'<text x="14" y="{(TOP + plot_bottom) / 2:.0f}" transform="rotate(-90 14 {(TOP + plot_bottom) / 2:.0f})" '
             f'text-anchor="middle">{escape(unit)}</text>']
    for tick in y.ticks:
        ty = to_y(tick)
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{number(tick)}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{plot_bottom}" stroke="#444"/>')
    return parts


def _legend(names: list[str], x: float, y: float) -> list[str]:
    parts, offset = [], 0.0
    for k, name in enumerate(names):
        parts.append(f'<rect class="legend" x="{x + offset:.1f}" y="{y - 9}" width="10" height="10" fill="{PALETTE[k % len(PALETTE)]}"/>'
                     f'<text x="{x + offset + 14:.1f}" y="{y}">{escape(name)}</text>')
        offset += 24 + _text_width(name, FONT)
    return parts


def bar_chart(title: str, groups: list[str], series: list[Bars], *, unit: str, reference: float | None = None,
              references: list[tuple[float, str]] = (), height: int = 300) -> str:
    """Grouped vertical bars from 0, a group per label, a bar per series; error bars of +/- one standard
    error; a series' note (e.g. the guard's top-1 agreement) above its bar; a dashed line at `reference`,
    and a labelled dashed line (class `reference`) at each of `references` (value, label), e.g. the roof."""
    bar_width, gap = 16, 14
    per_group = len(series) * bar_width + gap
    longest = max((len(g) for g in groups), default=4)
    # Labels run down to the right at 35 degrees: the last one needs room beyond the plot, all of them below it.
    width = max(480, LEFT + RIGHT + per_group * len(groups) + int(5.5 * longest), _text_width(title) + LEFT + RIGHT,
                _legend_width([s.name for s in series]) + LEFT + RIGHT)
    plot_bottom = height - min(170, int(4.2 * longest) + 24)
    tops = [v + ((s.errors or [None] * len(groups))[i] or 0) for s in series for i, v in enumerate(s.values) if v is not None]
    # Notes stand rotated above their bars: leave them a quarter of the height.
    noted = any(n for s in series for n in (s.notes or []))
    y = nice_axis(0.0, max(tops + [reference or 0.0, 1e-12] + [v for v, _ in references]) * (1.3 if noted else 1.0))

    def to_y(v: float) -> float:
        return plot_bottom - (v - y.low) / (y.high - y.low) * (plot_bottom - TOP)

    parts = _frame(width, height, title, y, unit, plot_bottom, to_y)
    for g, group in enumerate(groups):
        x0 = LEFT + gap / 2 + g * per_group
        gx = x0 + len(series) * bar_width / 2
        parts.append(f'<text x="{gx:.1f}" y="{plot_bottom + 12}" text-anchor="start" '
                     f'transform="rotate(35 {gx:.1f} {plot_bottom + 12})">{escape(group)}</text>')
        for k, s in enumerate(series):
            parts += _bar(s, g, x0 + k * bar_width, bar_width, PALETTE[k % len(PALETTE)], to_y, plot_bottom, unit)
    if reference is not None:
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{to_y(reference):.1f}" y2="{to_y(reference):.1f}" '
                     f'stroke="#000" stroke-dasharray="5 4"/>')
    for k, (value, label) in enumerate(references):
        ry, colour = to_y(value), PALETTE[-1 - k % len(PALETTE)]
        parts.append(f'<g class="reference" data-value="{value:.6g}"><line x1="{LEFT}" x2="{width - RIGHT}" y1="{ry:.1f}" '
                     f'y2="{ry:.1f}" stroke="{colour}" stroke-dasharray="6 3"/><text x="{width - RIGHT - 2}" y="{ry - 3:.1f}" '
                     f'font-size="{FONT - 2}" text-anchor="end">{escape(label)}</text></g>')
    if len(series) > 1:
        parts += _legend([s.name for s in series], LEFT, 32)
    return "".join(parts) + "</svg>"


def _text_width(text: str, size: int = FONT + 2) -> int:
    return int(len(text) * size * 0.56)  # sans-serif's average advance, about 0.56 em


def _legend_width(names: list[str]) -> int:
    return sum(24 + _text_width(n, FONT) for n in names)


def _bar(s: Bars, g: int, x: float, w: float, colour: str, to_y, bottom: float, unit: str) -> list[str]:
    value = s.values[g]
    if value is None:
        return []
    error = (s.errors or [None] * (g + 1))[g]
    top = min(to_y(value), bottom - 1)  # a zero still draws a 1-pixel bar, so that the check sees it
    tip = f"{s.name}: {number(value)} {unit}" + (f" ± {number(error)}" if error else "")
    parts = [f'<rect class="mark" x="{x + 1:.1f}" y="{top:.1f}" width="{w - 2}" height="{bottom - top:.1f}" '
             f'fill="{colour}" data-value="{value:.6g}"><title>{escape(tip)}</title></rect>']
    if error:
        cx, hi, lo = x + w / 2, to_y(value + error), to_y(max(value - error, 0.0))
        parts.append(f'<path class="errorbar" d="M{cx:.1f} {lo:.1f}V{hi:.1f}M{cx - 4:.1f} {hi:.1f}h8M{cx - 4:.1f} {lo:.1f}h8" '
                     f'stroke="#222" fill="none"/>')
    note = (s.notes or [None] * (g + 1))[g]
    if note:
        ny = to_y(value + (error or 0)) - 4
        parts.append(f'<text class="note" x="{x + w / 2:.1f}" y="{ny:.1f}" font-size="{FONT - 2}" text-anchor="start" '
                     f'transform="rotate(-60 {x + w / 2:.1f} {ny:.1f})">{escape(note)}</text>')
    return parts


def line_chart(title: str, lines: list[Line], *, x_unit: str, y_unit: str, spans: list[tuple[float, float, str]] = (),
               width: int = 460, height: int = 240) -> str:
    """Lines through (x, y) points, a dot on each of up to MAX_DOTS points; `spans` (x0, x1, label) shaded behind them."""
    width = max(width, _text_width(title) + LEFT + RIGHT)
    xs = [x for line in lines for x in line.xs] or [0.0, 1.0]
    ys = [v for line in lines for v in line.ys] or [0.0, 1.0]
    x_axis, y = nice_axis(min(xs + [s[0] for s in spans]), max(xs + [s[1] for s in spans])), nice_axis(0.0, max(ys))
    plot_bottom = height - 40

    def to_x(v: float) -> float:
        return LEFT + (v - x_axis.low) / (x_axis.high - x_axis.low) * (width - LEFT - RIGHT)

    def to_y(v: float) -> float:
        return plot_bottom - (v - y.low) / (y.high - y.low) * (plot_bottom - TOP)

    parts = _frame(width, height, title, y, y_unit, plot_bottom, to_y)
    for x0, x1, text in spans:
        parts.append(f'<rect class="span" x="{to_x(x0):.1f}" y="{TOP}" width="{max(to_x(x1) - to_x(x0), 1):.1f}" '
                     f'height="{plot_bottom - TOP}" fill="#f3c98b" opacity="0.5"><title>{escape(text)}</title></rect>'
                     f'<text x="{to_x(x0) + 3:.1f}" y="{TOP + 12}" font-size="{FONT - 2}">{escape(text)}</text>')
    for tick in x_axis.ticks:
        parts.append(f'<text x="{to_x(tick):.1f}" y="{plot_bottom + 14}" text-anchor="middle">{number(tick)}</text>')
    parts.append(f'<text x="{(LEFT + width) / 2:.0f}" y="{height - 6}" text-anchor="middle">{escape(x_unit)}</text>')
    for k, line in enumerate(lines):
        colour = PALETTE[k % len(PALETTE)]
        points = " ".join(f"{to_x(a):.1f},{to_y(b):.1f}" for a, b in zip(line.xs, line.ys))
        parts.append(f'<polyline class="mark" points="{points}" fill="none" stroke="{colour}" stroke-width="1.5">'
                     f'<title>{escape(line.name)}</title></polyline>')
        if len(line.xs) <= MAX_DOTS:  # past that the dots hide the line and only weigh on the file
            parts += [f'<circle cx="{to_x(a):.1f}" cy="{to_y(b):.1f}" r="2.5" fill="{colour}"/>' for a, b in zip(line.xs, line.ys)]
    if len(lines) > 1:
        parts += _legend([line.name for line in lines], LEFT, 32)
    return "".join(parts) + "</svg>"
