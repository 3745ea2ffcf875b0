"""Issue 7's bounds, read off one load benchmark run: each bound the run measured, its
figure and whether it holds. A bound the run did not measure is not listed (P4, the SQL
bound, is ``benchmarks.sql_usage``'s).

- P1 in flight: a row at 5 s of latency and 1,000 calls in flight offered steadily
  (``--steady``: all at once, the raw client itself gets about 0.7 of C/L), throughput at
  least 95 % of C/L, the worker's peak RSS at most 400 MB.
- P2 overhead: a row at 0 ms, the worker + its Postgres backends + Redis at most twice the
  raw call's CPU, and at least half the raw client's throughput.
- P3 latency: the paced run at half of the 0 ms saturation rate, enqueue to first gateway
  byte p50 at most 5 ms and p99 at most 25 ms, a final commit to its webhook p50 at most
  50 ms.

One worker process only: the bounds are a process's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

P1_LATENCY_S, P1_IN_FLIGHT, P1_OF_IDEAL, P1_RSS_MB = 5.0, 1000, 0.95, 400.0
P2_CPU_OVER_RAW, P2_OF_RAW = 2.0, 0.5
P3_FIRST_BYTE_P50_MS, P3_FIRST_BYTE_P99_MS, P3_WEBHOOK_P50_MS = 5.0, 25.0, 50.0


@dataclass(frozen=True, slots=True)
class Measured:
    """One row's figures, as the load benchmark has them."""

    latency: float
    concurrency: int
    raw: Mapping[str, float]
    ezq: Mapping[str, float]
    ratio: float  # ezq/s over raw/s (the median when repeated)
    # With ``--repeat``: the median of each run's ``service_cpu_over_raw``, not the ratio of
    # the figures' medians.
    cpu_over_raw: float | None = None


def service_cpu_over_raw(raw: Mapping[str, float], ezq: Mapping[str, float]) -> float:
    """The worker's, its Postgres backends' and Redis's CPU a job, over the raw call's."""
    service = ezq["worker_cpu_ms"] + ezq["pg_cpu_ms"] + ezq["redis_cpu_ms"]
    return service / raw["cpu_ms"]


def _verdict(holds: bool) -> str:
    return "met" if holds else "NOT met"


def _figure(value: float, limit: float) -> str:
    """Two decimals, or three where two would read as the limit itself (2.004 against 2)."""
    shown = f"{value:.2f}"
    return f"{value:.3f}" if float(shown) == limit else shown


def lines(
    rows: Sequence[Measured],
    paced: Mapping[str, float] | None,
    *,
    steady: bool,
    half_of_saturation: bool,
) -> list[str]:
    """One line per bound measured: its name, the figures, and ``met`` or ``NOT met``."""
    out: list[str] = []
    for row in rows:
        if steady and row.latency == P1_LATENCY_S and row.concurrency == P1_IN_FLIGHT:
            of_ideal = row.ezq["per_s"] / (row.concurrency / row.latency)
            rss = row.ezq["rss_mb"]
            holds = of_ideal >= P1_OF_IDEAL and rss <= P1_RSS_MB
            out.append(
                f"P1 in flight (5 s, 1000): {row.ezq['per_s']:.0f} jobs/s ="
                f" {_figure(of_ideal, P1_OF_IDEAL)} of C/L"
                f" (>= {P1_OF_IDEAL}), peak RSS {rss:.0f} MB (<= {P1_RSS_MB:.0f}):"
                f" {_verdict(holds)}"
            )
    for row in rows:
        if row.latency == 0:
            cpu = row.cpu_over_raw
            if cpu is None:
                cpu = service_cpu_over_raw(row.raw, row.ezq)
            holds = cpu <= P2_CPU_OVER_RAW and row.ratio >= P2_OF_RAW
            out.append(
                f"P2 overhead (0 ms, {row.concurrency}): service CPU a job"
                f" {cpu * row.raw['cpu_ms']:.2f} ms = {_figure(cpu, P2_CPU_OVER_RAW)}x the raw"
                f" call's {row.raw['cpu_ms']:.2f} ms (<= {P2_CPU_OVER_RAW:g}x), throughput"
                f" {_figure(row.ratio, P2_OF_RAW)} of the raw client's (>= {P2_OF_RAW}):"
                f" {_verdict(holds)}"
            )
    if paced is not None and half_of_saturation:
        p50, p99 = paced["first_byte_p50"], paced["first_byte_p99"]
        hook = paced["webhook_p50"]
        holds = (
            p50 <= P3_FIRST_BYTE_P50_MS
            and p99 <= P3_FIRST_BYTE_P99_MS
            and hook <= P3_WEBHOOK_P50_MS
        )
        out.append(
            f"P3 latency (at {paced['rate']:.0f} jobs/s): enqueue -> first byte p50 {p50:.1f} ms"
            f" (<= {P3_FIRST_BYTE_P50_MS:g}), p99 {p99:.1f} ms (<= {P3_FIRST_BYTE_P99_MS:g}),"
            f" commit -> webhook p50 {hook:.1f} ms (<= {P3_WEBHOOK_P50_MS:g}): {_verdict(holds)}"
        )
    return out
