"""The DuckDB engine: every pool's and every investor's figures in a few vectorised queries.

The reference semantics are ``core.domain.returns`` (Decimal, one pool at a time);
this module gives the same numbers for a whole book at once. How it stays exact:

* Stored integers (money at 4 places, units and prices at 6) are reinterpreted
  as DECIMAL in DuckDB, never converted through float.
* The total-return index telescopes: TRI_t = (p_t / p_0) * G_t, where G_t is the
  product of (p_s + d_s) / p_s over the valuations s <= t that follow a
  distribution. Distributions are rare, so G is computed in Python Decimal with
  the reference's 34-digit context, and every reported return is finished in
  Decimal from the exact prices at its two ends. DuckDB only decides *which*
  points matter (period anchors, peak, trough, recovery: TRI in HUGEINT fixed
  point at 1e-15, the trough's fall ratio as a double, used for choosing only)
  and sums the period returns for volatility (each to 1e-30, in HUGEINT limbs
  so that no square overflows).
* Returns are reported to 10 decimal places (half-even), XIRR as in
  ``returns.xirr``; the solver is the same (pyxirr, floats only inside it).
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

import duckdb
import numpy as np
import pyarrow as pa
import pyxirr

from core.analytics.loader import Book
from core.domain.money import minor_units
from core.domain.returns import annualise

RETURN_Q = Decimal("1e-10")
FP = 10**15  # fixed-point scale used for choosing points (never for a reported figure)
_CTX = Context(prec=34, rounding=ROUND_HALF_EVEN)
_ZERO = Decimal(0)
_ONE = Decimal(1)
MONEY_SCALE = Decimal("1e-4")
UNIT_SCALE = Decimal("1e-6")
PERIODS = ("mtd", "ytd", "1y", "3y", "since_inception")
NEEDS_HISTORY = ("1y", "3y")  # not available when the pool is younger than the period


def q10(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(RETURN_Q, rounding=ROUND_HALF_EVEN, context=_CTX)


def years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def period_starts(as_of: date) -> dict[str, date | None]:
    """Base dates: the TWR of a period runs from the last valuation on or before its start."""
    return {
        "mtd": as_of.replace(day=1) - timedelta(days=1),
        "ytd": date(as_of.year - 1, 12, 31),
        "1y": years_before(as_of, 1),
        "3y": years_before(as_of, 3),
        "since_inception": None,
    }


def xirr_from_arrays(days: np.ndarray, amounts: np.ndarray) -> Decimal | None:
    """``returns.xirr`` on already netted, date-sorted flows (datetime64[D], float)."""
    if len(days) < 2 or not ((amounts > 0).any() and (amounts < 0).any()):
        return None
    try:
        rate = pyxirr.xirr(days, amounts, day_count=pyxirr.DayCount.ACT_365F)
    except (pyxirr.InvalidPaymentsError, ValueError, ArithmeticError):
        return None
    return _rate(rate)


@dataclass
class Results:
    """Figures for a book: ``pools`` keyed by pool id (dicts of Decimals and dates),
    ``positions`` (one row per investor and pool) and ``investors`` (one row per investor
    and currency) as Arrow tables with exact decimal columns, and chart series."""

    as_of: date
    start: date | None
    pools: dict[int, dict]
    positions: pa.Table
    investors: pa.Table
    series: pa.Table
    monthly_flows: pa.Table
    prices: dict[int, Decimal]


_DATE_COLUMNS = {"valuations": "valuation_date", "distributions": "record_date", "legs": "effective_date"}


def _connect(book: Book) -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB with the book's tables, cut at the as-of date (the loader cuts too)."""
    import pyarrow.compute as pc

    con = duckdb.connect()
    for name in ("pools", "valuations", "distributions", "legs", "balances"):
        table = getattr(book, name)
        if name in _DATE_COLUMNS and table.num_rows:
            table = table.filter(pc.less_equal(table.column(_DATE_COLUMNS[name]), pa.scalar(book.as_of, pa.date32())))
        con.register(f"raw_{name}", table)
    return con


def compute(book: Book, *, start: date | None = None, risk_free_rate: Decimal = Decimal("0.02"),
            pool_figures: bool = True, with_series: bool = True) -> Results:
    """Every figure of ``book`` as of ``book.as_of``; ``start`` limits the window of the range return,
    volatility, Sharpe, drawdown, fees and charts (None: since inception)."""
    con = _connect(book)
    try:
        return _compute(con, book, start, risk_free_rate, pool_figures and book.investor_id is None, with_series)
    finally:
        con.close()


def _compute(con, book: Book, start, risk_free_rate, pool_figures: bool, with_series: bool) -> Results:
    as_of = book.as_of
    con.execute(f"SET VARIABLE as_of = DATE '{as_of.isoformat()}'")
    # Price points: the initial unit price at inception (unless valued that day), then every valuation.
    con.sql("""
        CREATE TEMP TABLE points AS
        WITH raw AS (
            SELECT pool_id, valuation_date AS d, nav_per_unit AS p FROM raw_valuations
            UNION ALL
            SELECT pool_id, inception_date, initial_price FROM raw_pools pl
            WHERE inception_date <= getvariable('as_of') AND NOT EXISTS (
                SELECT 1 FROM raw_valuations v WHERE v.pool_id = pl.pool_id AND v.valuation_date = pl.inception_date)
        )
        SELECT pool_id, d, p, (row_number() OVER (PARTITION BY pool_id ORDER BY d) - 1)::BIGINT AS seq FROM raw
    """)
    # A distribution belongs to the first valuation after its record date (d_t of ACCOUNTING.md).
    con.sql("""
        CREATE TEMP TABLE dpoints AS
        SELECT pt.pool_id, pt.seq, sum(ds.per_unit)::BIGINT AS dsum
        FROM raw_distributions ds ASOF JOIN points pt ON ds.pool_id = pt.pool_id AND pt.d > ds.record_date
        GROUP BY ALL
    """)
    gfactor_rows = con.sql("""
        SELECT dp.pool_id, dp.seq, pt.p, dp.dsum FROM dpoints dp JOIN points pt USING (pool_id, seq)
        ORDER BY dp.pool_id, dp.seq
    """).fetchall()
    # G per pool: list of (seq, G) steps, exact to 34 digits, as in the reference TRI.
    g_steps: dict[int, tuple[list[int], list[Decimal]]] = {}
    g_rows = []
    with localcontext(_CTX):
        for pool_id, seq, p, dsum in gfactor_rows:
            seqs, values = g_steps.setdefault(pool_id, ([], []))
            previous = values[-1] if values else _ONE
            g = previous * (Decimal(p) + Decimal(dsum)) / Decimal(p)
            seqs.append(seq)
            values.append(g)
            g_rows.append((pool_id, seq, int((g * FP).to_integral_value())))
    gtable = pa.table({"pool_id": pa.array([r[0] for r in g_rows], pa.int64()),
                       "seq": pa.array([r[1] for r in g_rows], pa.int64()),
                       "g_fp": pa.array([Decimal(r[2]) for r in g_rows], pa.decimal128(38, 0))})
    con.register("gfactors", gtable)

    def g_at(pool_id: int, seq: int) -> Decimal:
        steps = g_steps.get(pool_id)
        if not steps:
            return _ONE
        i = bisect_right(steps[0], seq)
        return steps[1][i - 1] if i else _ONE

    con.sql(f"""
        CREATE TEMP TABLE tri AS
        SELECT pt.pool_id, pt.seq, pt.d, pt.p, coalesce(dp.dsum, 0)::BIGINT AS dsum,
               coalesce(g.g_fp::HUGEINT, {FP}::HUGEINT) AS g_fp,
               (pt.p::HUGEINT * coalesce(g.g_fp::HUGEINT, {FP}::HUGEINT))
                   // first(pt.p) OVER (PARTITION BY pt.pool_id ORDER BY pt.seq) AS tri_fp
        FROM points pt
        LEFT JOIN dpoints dp USING (pool_id, seq)
        ASOF LEFT JOIN gfactors g ON g.pool_id = pt.pool_id AND pt.seq >= g.seq
    """)

    pools_meta = {r[0]: r for r in con.execute(
        "SELECT pool_id, code, name, currency, status, inception_date, initial_price, ledger_version FROM raw_pools"
    ).fetchall()}
    pools: dict[int, dict] = {}
    if pool_figures:
        pools = _pool_figures(con, book, start, risk_free_rate, pools_meta, g_at)
    positions, investors = _investor_figures(con, book, pools_meta)
    if with_series and pool_figures:
        series, monthly = _series(con, start)
    else:
        series, monthly = pa.table({}), pa.table({})
    current = _current_prices(con)
    prices = {pid: Decimal(current.get(pid, meta[6])).scaleb(-6) for pid, meta in pools_meta.items()}
    return Results(as_of, start, pools, positions, investors, series, monthly, prices)


def _pool_figures(con, book: Book, start, risk_free_rate, pools_meta, g_at) -> dict[int, dict]:
    as_of = book.as_of
    starts = period_starts(as_of)
    starts["range"] = start
    period_table = pa.table({"period": list(starts), "start_date": pa.array(list(starts.values()), pa.date32())})
    con.register("periods", period_table)
    anchors = con.sql("""
        SELECT t.pool_id, pr.period,
               max(t.seq) FILTER (WHERE pr.start_date IS NOT NULL AND t.d <= pr.start_date) AS a_seq,
               max(t.seq) AS b_seq
        FROM tri t CROSS JOIN periods pr GROUP BY ALL
    """).fetchall()
    # Points used as anchors, peaks and troughs are fetched by (pool, seq) once they are known.
    wanted: set[tuple[int, int]] = set()
    period_anchor: dict[tuple[int, str], tuple[int | None, int, bool]] = {}
    for pool_id, period, a_seq, b_seq in anchors:
        has_history = a_seq is not None
        a = a_seq if a_seq is not None else 0
        period_anchor[(pool_id, period)] = (a, b_seq, has_history)
        wanted.update({(pool_id, a), (pool_id, b_seq)})
    window = pa.table({
        "pool_id": pa.array([k[0] for k, v in period_anchor.items() if k[1] == "range"], pa.int64()),
        "w0": pa.array([v[0] for k, v in period_anchor.items() if k[1] == "range"], pa.int64()),
        "b": pa.array([v[1] for k, v in period_anchor.items() if k[1] == "range"], pa.int64()),
    })
    con.register("window_bounds", window)
    con.execute("CREATE TEMP TABLE win AS SELECT t.* FROM tri t JOIN window_bounds w USING (pool_id) "
                "WHERE t.seq BETWEEN w.w0 AND w.b")
    # Period returns at 1e-30 in two limbs, r * FP^2 = q1 * FP + q2 (0 <= q2 < FP), with q1 split again
    # (q1 = h * FP + l) so that every product summed below fits in HUGEINT; Python joins the sums exactly.
    stats = {}
    for pool_id, n, sq1, sq2, hh, hl, ll, hq, lq, qq in con.sql(f"""
        WITH r AS (
            SELECT pool_id, (p + dsum)::HUGEINT * {FP}::HUGEINT AS num,
                   lag(p) OVER (PARTITION BY pool_id ORDER BY seq)::HUGEINT AS den
            FROM win
        ), limbs AS (
            SELECT pool_id, num // den - {FP}::HUGEINT AS q1, ((num % den) * {FP}::HUGEINT) // den AS q2
            FROM r WHERE den IS NOT NULL
        ), split AS (
            SELECT pool_id, q1, q2, q1 // {FP}::HUGEINT AS h, q1 % {FP}::HUGEINT AS l FROM limbs
        )
        SELECT pool_id, count(*), sum(q1)::HUGEINT, sum(q2)::HUGEINT, sum(h * h)::HUGEINT, sum(h * l)::HUGEINT,
               sum(l * l)::HUGEINT, sum(h * q2)::HUGEINT, sum(l * q2)::HUGEINT, sum(q2 * q2)::HUGEINT
        FROM split GROUP BY pool_id
    """).fetchall():
        sum_q1_sq = int(hh) * FP * FP + 2 * int(hl) * FP + int(ll)
        sum_q1_q2 = int(hq) * FP + int(lq)
        s1 = int(sq1) * FP + int(sq2)
        s2 = sum_q1_sq * FP * FP + 2 * sum_q1_q2 * FP + int(qq)
        stats[pool_id] = (n, s1, s2)
    drawdowns = {r[0]: r[1:] for r in con.sql("""
        WITH run AS (
            SELECT *, max({'v': tri_fp, 'k': -seq}) OVER (PARTITION BY pool_id ORDER BY seq
                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS pk
            FROM win
        ), ratio AS (
            SELECT pool_id, seq, tri_fp, pk, tri_fp::DOUBLE / pk.v::DOUBLE AS r FROM run
        ), worst AS (
            SELECT pool_id, min({'r': r, 's': seq, 'ps': -pk.k, 'pv': pk.v}) AS m FROM ratio GROUP BY pool_id
        )
        SELECT w.pool_id, w.m.r, w.m.s, w.m.ps,
               (SELECT min(x.seq) FROM ratio x WHERE x.pool_id = w.pool_id AND x.seq > w.m.s AND x.tri_fp >= w.m.pv)
        FROM worst w
    """).fetchall()}
    for pool_id, (ratio, trough, peak, recovery) in drawdowns.items():
        wanted.update({(pool_id, trough), (pool_id, peak)})
        if recovery is not None:
            wanted.add((pool_id, recovery))
    wanted_table = pa.table({"pool_id": pa.array([w[0] for w in wanted], pa.int64()),
                             "seq": pa.array([w[1] for w in wanted], pa.int64())})
    con.register("wanted", wanted_table)
    point_at = {(r[0], r[1]): (r[2], r[3]) for r in con.execute(
        "SELECT pool_id, seq, d, p FROM tri JOIN wanted USING (pool_id, seq)").fetchall()}

    def price(pool_id: int, seq: int) -> Decimal:
        return Decimal(point_at[(pool_id, seq)][1]).scaleb(-6)

    def day(pool_id: int, seq: int) -> date:
        return point_at[(pool_id, seq)][0]

    def tri_ratio(pool_id: int, a: int, b: int) -> Decimal:
        with localcontext(_CTX):
            return (price(pool_id, b) * g_at(pool_id, b)) / (price(pool_id, a) * g_at(pool_id, a)) - 1

    levels = {r[0]: r[1:] for r in con.sql("""
        WITH inv AS (
            SELECT pool_id, investor_id, sum(units) FILTER (WHERE account = 0) AS units,
                   sum(amount) AS cash
            FROM raw_legs GROUP BY ALL
        ), top AS (
            SELECT pool_id, sum(units) AS top_units FROM (
                SELECT pool_id, units, row_number() OVER (PARTITION BY pool_id ORDER BY units DESC, investor_id) AS rk
                FROM inv WHERE units > 0) WHERE rk <= 10 GROUP BY pool_id
        )
        SELECT pl.pool_id,
               coalesce((SELECT sum(units) FROM inv WHERE inv.pool_id = pl.pool_id), 0)::HUGEINT,
               coalesce((SELECT sum(cash) FROM inv WHERE inv.pool_id = pl.pool_id), 0)::HUGEINT,
               coalesce((SELECT sum(amount) FROM raw_balances b WHERE b.pool_id = pl.pool_id), 0)::HUGEINT,
               coalesce((SELECT sum(amount) FROM raw_balances b WHERE b.pool_id = pl.pool_id
                         AND b.account = 'fees_payable'), 0)::HUGEINT,
               coalesce((SELECT top_units FROM top WHERE top.pool_id = pl.pool_id), 0)::HUGEINT,
               (SELECT count(*) FROM inv WHERE inv.pool_id = pl.pool_id AND inv.units > 0)
        FROM raw_pools pl
    """).fetchall()}
    current = _current_prices(con)
    start_clause = f"AND valuation_date >= DATE '{start.isoformat()}'" if start else ""
    fees = {r[0]: r[1:] for r in con.execute(
        f"SELECT pool_id, sum(management_fee)::HUGEINT, sum(performance_fee)::HUGEINT, count(*), "
        f"max(valuation_date) FROM raw_valuations WHERE true {start_clause} GROUP BY pool_id"
    ).fetchall()}

    results: dict[int, dict] = {}
    for pool_id, meta in pools_meta.items():
        _, code, name, currency, status, inception, initial_price, version = meta
        minor = minor_units(currency)
        units_raw, cash_raw, other_raw, fees_payable_raw, top_raw, holders = levels.get(pool_id, (0, 0, 0, 0, 0, 0))
        total_assets = -(Decimal(int(cash_raw)) + Decimal(int(other_raw))).scaleb(-4)
        fees_payable = -Decimal(int(fees_payable_raw)).scaleb(-4)
        units = Decimal(int(units_raw)).scaleb(-6)
        nav_per_unit = Decimal(current.get(pool_id, initial_price)).scaleb(-6)
        figure: dict = {
            "pool_id": pool_id, "code": code, "name": name, "currency": currency, "status": status,
            "inception_date": inception, "as_of": as_of, "start": start, "ledger_version": version,
            "units_outstanding": units.quantize(UNIT_SCALE),
            "total_assets": total_assets.quantize(Decimal(1).scaleb(-minor)),
            "fees_payable": fees_payable.quantize(Decimal(1).scaleb(-minor)),
            "nav": (total_assets - fees_payable).quantize(Decimal(1).scaleb(-minor)),
            "nav_per_unit": nav_per_unit.quantize(UNIT_SCALE),
            "holders": int(holders),
            "top10_concentration": q10(Decimal(int(top_raw)).scaleb(-6) / units) if units > 0 else None,
        }
        mgmt, perf, valuation_count, last_valuation = fees.get(pool_id, (0, 0, 0, None))
        figure["fees"] = {
            "management": Decimal(int(mgmt)).scaleb(-4).quantize(Decimal(1).scaleb(-minor)),
            "performance": Decimal(int(perf)).scaleb(-4).quantize(Decimal(1).scaleb(-minor)),
        }
        figure["fees"]["total"] = figure["fees"]["management"] + figure["fees"]["performance"]
        figure["valuations"] = int(valuation_count)
        figure["last_valuation_date"] = last_valuation
        returns: dict[str, dict] = {}
        for period in (*PERIODS, "range"):
            anchor = period_anchor.get((pool_id, period))
            entry = {"start": None, "end": None, "days": None, "return": None, "annualised": None}
            if anchor is not None:
                a, b, has_history = anchor
                if b > a and not (period in NEEDS_HISTORY and not has_history):
                    value = tri_ratio(pool_id, a, b)
                    days = (day(pool_id, b) - day(pool_id, a)).days
                    entry = {"start": day(pool_id, a), "end": day(pool_id, b), "days": days,
                             "return": q10(value), "annualised": q10(annualise(value, days))}
            returns[period] = entry
        figure["returns"] = returns
        figure["twr_since_inception"] = returns["since_inception"]["return"]
        figure.update(_risk(pool_id, stats.get(pool_id), drawdowns.get(pool_id), period_anchor.get((pool_id, "range")),
                            risk_free_rate, day, tri_ratio))
        results[pool_id] = figure
    return results


def _risk(pool_id, stat, drawdown, window, risk_free_rate, day, tri_ratio) -> dict:
    out = {"volatility": None, "sharpe": None, "max_drawdown": None}
    if window is None:
        return out
    w0, b, _ = window
    if stat is not None and stat[0] >= 2 and b > w0:
        n, s1, s2 = int(stat[0]), int(stat[1]), int(stat[2])
        days = (day(pool_id, b) - day(pool_id, w0)).days
        scale = FP ** 2
        with localcontext(_CTX) as ctx:
            per_year = Decimal(365) * n / days
            mean = Decimal(s1) / Decimal(n * scale)
            # Exact integers up to the one division: no cancellation in n*S2 - S1^2.
            variance = Decimal(n * s2 - s1 * s1) / Decimal(n * (n - 1) * scale * scale)
            stdev = ctx.sqrt(variance) if variance > 0 else _ZERO
            vol = stdev * ctx.sqrt(per_year)
            out["volatility"] = q10(vol)
            out["sharpe"] = q10((mean * per_year - risk_free_rate) / vol) if vol != 0 else None
    if drawdown is not None and b > w0:
        ratio, trough, peak, recovery = drawdown
        if ratio >= 1:
            first = day(pool_id, w0)
            out["max_drawdown"] = {"depth": Decimal(0).quantize(RETURN_Q), "peak_date": first, "trough_date": first,
                                   "recovery_date": first}
        else:
            out["max_drawdown"] = {"depth": q10(tri_ratio(pool_id, peak, trough)), "peak_date": day(pool_id, peak),
                                   "trough_date": day(pool_id, trough),
                                   "recovery_date": day(pool_id, recovery) if recovery is not None else None}
    return out


def _current_prices(con) -> dict[int, int]:
    """The NAV per unit in force on the as-of date: the latest valuation, or a later distribution's price after."""
    return dict(con.sql("""
        SELECT pool_id, arg_max(p, {'d': d, 'o': o}) FROM (
            SELECT pool_id, valuation_date AS d, 0 AS o, nav_per_unit AS p FROM raw_valuations
            UNION ALL
            SELECT pool_id, record_date, 1, nav_per_unit_after FROM raw_distributions
        ) GROUP BY pool_id
    """).fetchall())


def _investor_figures(con, book: Book, pools_meta) -> tuple[pa.Table, pa.Table]:
    as_of = book.as_of
    current = _current_prices(con)
    price_table = pa.table({
        "pool_id": pa.array(list(pools_meta), pa.int64()),
        "price": pa.array([current.get(pid, meta[6]) for pid, meta in pools_meta.items()], pa.int64()),
        "currency": pa.array([meta[3] for meta in pools_meta.values()], pa.string()),
        "value_step": pa.array([10 ** (12 - minor_units(meta[3])) for meta in pools_meta.values()], pa.int64()),
        "to_money": pa.array([10 ** (4 - minor_units(meta[3])) for meta in pools_meta.values()], pa.int64()),
    })
    con.register("prices", price_table)
    # Contributions are negative investor legs, withdrawals positive, except on reversals, which undo one.
    con.sql("""
        CREATE TEMP TABLE pos AS
        WITH agg AS (
            SELECT pool_id, investor_id,
                coalesce(sum(units) FILTER (WHERE account = 0), 0)::BIGINT AS units,
                coalesce(sum(-amount) FILTER (WHERE account = 0 AND ((reversal = 0 AND amount < 0)
                                                                     OR (reversal = 1 AND amount > 0))), 0) AS contributed,
                coalesce(sum(amount) FILTER (WHERE account = 0 AND ((reversal = 0 AND amount > 0)
                                                                    OR (reversal = 1 AND amount < 0))), 0) AS withdrawn,
                coalesce(sum(amount) FILTER (WHERE account = 1), 0) AS distributions,
                min(effective_date) AS first_date
            FROM raw_legs GROUP BY ALL
        ), valued AS (
            SELECT a.*, pr.currency, pr.price, pr.to_money,
                   (a.units::HUGEINT * pr.price::HUGEINT) AS x, pr.value_step::HUGEINT AS m
            FROM agg a JOIN prices pr USING (pool_id)
        )
        SELECT pool_id, investor_id, currency, first_date, units, contributed::BIGINT AS contributed,
               withdrawn::BIGINT AS withdrawn, distributions::BIGINT AS distributions,
               ((x // m + CASE WHEN 2 * (x % m) > m OR (2 * (x % m) = m AND (x // m) % 2 = 1) THEN 1 ELSE 0 END)
                 * to_money)::BIGINT AS value
        FROM valued
    """)
    positions = con.sql("""
        SELECT pool_id, investor_id, currency, first_date,
               units::DECIMAL(38,0) * 0.000001 AS units,
               value::DECIMAL(38,0) * 0.0001 AS value,
               contributed::DECIMAL(38,0) * 0.0001 AS contributed,
               withdrawn::DECIMAL(38,0) * 0.0001 AS withdrawn,
               distributions::DECIMAL(38,0) * 0.0001 AS distributions,
               (contributed - withdrawn)::DECIMAL(38,0) * 0.0001 AS cost_basis,
               (value + withdrawn + distributions - contributed)::DECIMAL(38,0) * 0.0001 AS gain
        FROM pos ORDER BY pool_id, investor_id
    """).to_arrow_table()
    investors = con.sql("""
        SELECT investor_id, currency, count(*)::BIGINT AS pools,
               sum(value)::DECIMAL(38,0) * 0.0001 AS value,
               sum(contributed)::DECIMAL(38,0) * 0.0001 AS contributed,
               sum(withdrawn)::DECIMAL(38,0) * 0.0001 AS withdrawn,
               sum(distributions)::DECIMAL(38,0) * 0.0001 AS distributions,
               sum(contributed - withdrawn)::DECIMAL(38,0) * 0.0001 AS cost_basis,
               sum(value + withdrawn + distributions - contributed)::DECIMAL(38,0) * 0.0001 AS gain
        FROM pos GROUP BY ALL ORDER BY investor_id, currency
    """).to_arrow_table()
    con.execute(f"SET VARIABLE as_of_day = DATE '{as_of.isoformat()}'")
    # Dated flows from the investor's side and the closing value as a final flow, netted per date once;
    # the overall (per currency) flows are the same dates re-netted across the investor's pools.
    con.sql("""
        CREATE TEMP TABLE netted AS
        SELECT pool_id, investor_id, d, sum(amount)::BIGINT AS amount FROM (
            SELECT pool_id, investor_id, effective_date AS d, amount FROM raw_legs
            UNION ALL
            SELECT pool_id, investor_id, getvariable('as_of_day'), value FROM pos WHERE value <> 0
        ) GROUP BY ALL HAVING sum(amount) <> 0
    """)
    position_xirr = _solve_all(con, ("pool_id", "investor_id"), "netted")
    investor_xirr = _solve_all(con, ("investor_id", "currency"), """
        (SELECT investor_id, currency, d, sum(amount)::BIGINT AS amount FROM netted JOIN prices USING (pool_id)
         GROUP BY ALL HAVING sum(amount) <> 0)""")
    positions = positions.append_column("xirr", pa.array(
        [_fmt(position_xirr.get(k)) for k in zip(positions.column("pool_id").to_pylist(),
                                                  positions.column("investor_id").to_pylist())], pa.string()))
    investors = investors.append_column("xirr", pa.array(
        [_fmt(investor_xirr.get(k)) for k in zip(investors.column("investor_id").to_pylist(),
                                                  investors.column("currency").to_pylist())], pa.string()))
    return positions, investors


def _fmt(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _solve_all(con, keys: tuple[str, str], source: str) -> dict:
    """XIRR for every group of netted flows with both signs: solved by pyxirr, group by group."""
    key_list = ", ".join(keys)
    table = con.sql(f"""
        WITH src AS (SELECT * FROM {source}),
        eligible AS (
            SELECT {key_list} FROM src GROUP BY ALL HAVING count(*) >= 2 AND min(amount) < 0 AND max(amount) > 0
        )
        SELECT s.{keys[0]}, s.{keys[1]}, s.d, s.amount FROM src s SEMI JOIN eligible e USING ({key_list})
        ORDER BY s.{keys[0]}, s.{keys[1]}, s.d
    """).to_arrow_table()
    if table.num_rows == 0:
        return {}
    first = table.column(0).to_numpy()
    second = table.column(1)
    if pa.types.is_string(second.type):
        second_codes = second.combine_chunks().dictionary_encode().indices.to_numpy()
    else:
        second_codes = second.to_numpy()
    days = table.column("d").to_numpy().astype("datetime64[D]")
    amounts = table.column("amount").to_numpy().astype(np.float64) / 1e4  # floats only for the solver
    change = np.flatnonzero((np.diff(first) != 0) | (np.diff(second_codes) != 0)) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    ends = np.concatenate((change, [len(first)])).astype(np.int64)
    first_keys = first[starts].tolist()
    second_keys = second.take(pa.array(starts)).to_pylist()
    out = {}
    solve, day_count = pyxirr.xirr, pyxirr.DayCount.ACT_365F
    for key_a, key_b, s, e in zip(first_keys, second_keys, starts.tolist(), ends.tolist()):
        try:
            rate = solve(days[s:e], amounts[s:e], day_count=day_count)
        except (pyxirr.InvalidPaymentsError, ValueError, ArithmeticError):
            rate = None
        out[(key_a, key_b)] = _rate(rate)
    return out


def _rate(rate: float | None) -> Decimal | None:
    """As ``returns.xirr``: no finite rate above -100% is "not available"; else rounded to 10 places."""
    if rate is None or not np.isfinite(rate) or rate <= -1:
        return None
    value = Decimal(rate)
    return value.quantize(RETURN_Q, context=Context(prec=max(34, value.adjusted() + 12)))


def _series(con, start: date | None) -> tuple[pa.Table, pa.Table]:
    start_clause = f"WHERE d >= DATE '{start.isoformat()}'" if start else ""
    series = con.sql(f"""
        WITH s AS (
            SELECT t.pool_id, t.d AS date, t.p::DECIMAL(38,0) * 0.000001 AS nav_per_unit, t.tri_fp,
                   v.total_assets::DECIMAL(38,0) * 0.0001 AS total_assets, v.nav::DECIMAL(38,0) * 0.0001 AS nav,
                   v.units_outstanding::DECIMAL(38,0) * 0.000001 AS units_outstanding
            FROM tri t LEFT JOIN raw_valuations v ON v.pool_id = t.pool_id AND v.valuation_date = t.d
            {start_clause.replace('d >=', 't.d >=')}
        )
        SELECT pool_id, date, nav_per_unit, total_assets, nav, units_outstanding,
               (tri_fp::DECIMAL(38,0) / first(tri_fp) OVER w)::DOUBLE AS tri_chart,
               (tri_fp::DOUBLE / max(tri_fp) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - 1)
                   AS drawdown_chart
        FROM s WINDOW w AS (PARTITION BY pool_id ORDER BY date)
        ORDER BY pool_id, date
    """).to_arrow_table()
    monthly = con.sql(f"""
        SELECT pool_id, date_trunc('month', effective_date)::DATE AS month,
               (coalesce(sum(-amount) FILTER (WHERE amount < 0), 0))::DECIMAL(38,0) * 0.0001 AS money_in,
               (coalesce(sum(amount) FILTER (WHERE amount > 0), 0))::DECIMAL(38,0) * 0.0001 AS money_out,
               (-sum(amount))::DECIMAL(38,0) * 0.0001 AS net_flow
        FROM raw_legs WHERE account = 0 {('AND effective_date >= DATE ' + repr(start.isoformat())) if start else ''}
        GROUP BY ALL ORDER BY pool_id, month
    """).to_arrow_table()
    return series, monthly
