"""``ezq usage --chart``: daily tokens and cost, stacked by model, as a PNG.

matplotlib is the optional ``ezq[charts]`` extra, imported only here and only when a chart
is asked for, so the core install and ``ezq --help`` stay light.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

from service.errors import EzqError
from service.usage.report import DayModel, ReportQuery

MISSING_EXTRA = "--chart needs matplotlib: pip install 'ezq[charts]'"


def require_matplotlib() -> None:
    """Raise the one-line error now, before any work, when the extra is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EzqError(MISSING_EXTRA) from None


def _days(query: ReportQuery) -> list[date]:
    count = (query.until - query.since).days + 1
    return [query.since + timedelta(days=i) for i in range(count)]


def write_chart(path: Path, query: ReportQuery, usage: list[DayModel]) -> None:
    """Two stacked bar charts sharing the day axis: total tokens, then cost in USD."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import StrMethodFormatter
    except ImportError:
        raise EzqError(MISSING_EXTRA) from None

    days = _days(query)
    index = {day: i for i, day in enumerate(days)}
    tokens: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(days))
    costs: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(days))
    unpriced = 0
    for cell in usage:
        tokens[cell.model][index[cell.day]] = float(cell.total_tokens)
        # Floats only to draw: the amounts shown in tables and files stay Decimal.
        costs[cell.model][index[cell.day]] = float(cell.cost_usd or 0)
        unpriced += cell.unpriced_jobs

    figure = Figure(figsize=(max(8.0, len(days) * 0.25), 8.0), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    positions = list(range(len(days)))
    for axes, series in ((top, tokens), (bottom, costs)):
        base = [0.0] * len(days)
        for model in sorted(series):
            axes.bar(positions, series[model], bottom=base, label=model, width=0.8)
            base = [b + v for b, v in zip(base, series[model], strict=True)]
        axes.grid(axis="y", alpha=0.3)
    top.set_ylabel("total tokens")
    top.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    bottom.set_ylabel("cost (USD)")
    bottom.yaxis.set_major_formatter(StrMethodFormatter("${x:,.2f}"))
    if tokens:
        handles, labels = top.get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small")
    title = f"Usage by model, {query.since} to {query.until} (UTC days)"
    if unpriced:
        title += f"\n{unpriced:,} unpriced jobs are not in the cost"
    figure.suptitle(title)
    step = -(-len(days) // 10)  # at most ten labels
    bottom.set_xticks(positions[::step], [f"{day:%m-%d}" for day in days[::step]])
    figure.savefig(path, format="png", dpi=100)
