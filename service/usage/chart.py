"""``ezq usage --chart``: daily tokens and cost, stacked by model, as a PNG.

matplotlib is the optional ``charts`` extra of this project, imported only here and only
when a chart is asked for, so the core install and ``ezq --help`` stay light.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from service.errors import EzqError
from service.usage.report import DayModel, ReportQuery

# Not `pip install 'ezq[charts]'`: on the public index "ezq" is an unrelated package.
MISSING_EXTRA = (
    "--chart needs matplotlib, the charts extra: pip install -e '.[charts]' in an ezq checkout,"
    " or pip install 'dist/ezq-<version>-py3-none-any.whl[charts]' for a built wheel"
)


def check_chart_path(path: Path) -> None:
    """Refuse, before any work, a path that is not a .png in an existing folder."""
    from service.errors import InvalidRequest

    if path.suffix.lower() != ".png":
        raise InvalidRequest("--chart", f"{path.name!r} must end in .png (the chart is a PNG)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidRequest("--chart", f"folder {str(folder)!r} does not exist")


def require_matplotlib() -> None:
    """Raise the one-line error now, before any work, when the extra is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EzqError(MISSING_EXTRA) from None


def _days(query: ReportQuery) -> list[date]:
    count = (query.until - query.since).days + 1
    return [query.since + timedelta(days=i) for i in range(count)]


def _money(top: float) -> Callable[[float, object], str]:
    """A tick formatter with as many decimals as the axis needs: $0.0004 is not $0.00."""
    places = 2
    while top > 0 and top < 10 ** (1 - places) and places < 10:
        places += 1

    def show(value: float, _: object) -> str:
        return f"${value:,.{places}f}"

    return show


def _title(query: ReportQuery, unpriced: int) -> str:
    title = f"Usage by model, {query.since} to {query.until} (UTC days)"
    filters = [
        *(f"tenant {t}" for t in query.tenants),
        *(f"model {m}" for m in query.models),
    ]
    if filters:
        title += "\n" + ", ".join(filters)
    if unpriced:
        title += f"\n{unpriced:,} unpriced jobs are not in the cost"
    return title


def write_chart(path: Path, query: ReportQuery, usage: list[DayModel]) -> None:
    """Write the chart of ``build_figure`` to ``path`` as a PNG (one line when it cannot)."""
    from service.errors import InvalidRequest

    figure = build_figure(query, usage)
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise InvalidRequest(
            "--chart", f"cannot write {str(path)!r}: {exc.strerror or exc}"
        ) from None


def build_figure(query: ReportQuery, usage: list[DayModel]) -> Any:
    """Two stacked bar charts sharing the day axis: total tokens, then cost in USD."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, StrMethodFormatter
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
    top_cost = max((sum(day) for day in zip(*costs.values(), strict=True)), default=0.0)
    bottom.yaxis.set_major_formatter(FuncFormatter(_money(top_cost)))
    if tokens:
        handles, labels = top.get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small")
    figure.suptitle(_title(query, unpriced))
    step = -(-len(days) // 10)  # at most ten labels
    bottom.set_xticks(positions[::step], [f"{day:%m-%d}" for day in days[::step]])
    return figure
