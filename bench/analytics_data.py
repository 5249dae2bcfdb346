"""Benchmark book for ``bench.analytics``: pools, investors, daily valuations and a million transactions.

Simulated day by day per pool under the ledger rules (valuation first, then the
day's flows at its NAV per unit; management fee accrued Actual/365; annual
distributions split by largest remainder), in integers at the stored scales, and
written with COPY. Deterministic for a given seed.
"""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import numpy as np
import psycopg

INCEPTION = date(2021, 1, 1)
LAST_DAY = date(2025, 12, 31)
CURRENCIES = ["USD"] * 80 + ["EUR"] * 15 + ["GBP"] * 5


def _div_he(n: int, d: int) -> int:
    """n / d rounded half-even (d > 0)."""
    q, r = divmod(n, d)
    if 2 * r > d or (2 * r == d and q % 2 == 1):
        q += 1
    return q


def generate(conninfo: str, *, pools: int = 100, investors: int = 10_000, transactions: int = 1_000_000,
             seed: int = 7) -> dict:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    now = datetime.now(timezone.utc)
    days = [INCEPTION + timedelta(days=i) for i in range((LAST_DAY - INCEPTION).days + 1)]
    users = [(1, "admin@bench.invalid", "Bench Admin", "admin", "active", 0, now, 1)]
    users += [(1 + i, f"investor{i}@bench.invalid", f"Investor {i}", "investor", "active", 0, now, 1)
              for i in range(1, investors + 1)]
    pool_rows, position_rows, tx_rows, journal_rows, valuation_rows, distribution_rows = [], [], [], [], [], []
    ids = {"tx": 0, "journal": 0, "valuation": 0, "distribution": 0}
    per_pool_members = max(30, investors * 3 // pools)
    distribution_days = {date(y, 12, 15) for y in range(INCEPTION.year, LAST_DAY.year + 1)}
    # Distribution parts count as transactions: leave room for them in the flow budget.
    flows_per_pool = (transactions - pools * len(distribution_days) * per_pool_members * 9 // 10) // pools

    def journal(pool_id, tx_id, val_id, dist_id, account, investor_id, amount, units, day):
        ids["journal"] += 1
        journal_rows.append((ids["journal"], pool_id, tx_id, val_id, dist_id, account, investor_id, amount, units,
                             day, now))

    for pool_id in range(1, pools + 1):
        currency = CURRENCIES[(pool_id - 1) % len(CURRENCIES)]
        bps = rng.choice([0, 50, 100, 150])
        members = rng.sample(range(2, investors + 2), per_pool_members)
        flow_days = np.sort(nrng.integers(0, len(days), size=flows_per_pool))
        drift, vol = rng.uniform(-0.0001, 0.0004), rng.uniform(0.004, 0.015)
        shocks = nrng.normal(drift, vol, size=len(days))
        returns_ppb = np.round(shocks * 1e9).astype(np.int64).tolist()
        units, assets_c, fees_c, price = 0, 0, 0, 10_000_000
        held: dict[int, int] = {}
        opened: dict[int, int] = {}
        totals: dict[int, list[int]] = {}
        k = 0
        previous_day = None
        for index, day in enumerate(days):
            # Valuation first.
            gain_c = assets_c * returns_ppb[index] // 1_000_000_000 if units else 0
            assets_c += gain_c
            nav_before = assets_c - fees_c
            fee_c = _div_he(nav_before * bps * (day - previous_day).days, 10_000 * 365) if previous_day and units else 0
            fees_c += fee_c
            nav_c = assets_c - fees_c
            if units:
                price = _div_he(nav_c * 10_000_000_000, units)
            ids["valuation"] += 1
            vid = ids["valuation"]
            valuation_rows.append((vid, pool_id, day, assets_c * 100, nav_before * 100, fee_c * 100, 0, nav_c * 100,
                                   units, price, None, "", 1, now))
            journal(pool_id, None, vid, None, "pool", None, gain_c * 100, 0, day)
            journal(pool_id, None, vid, None, "gain", None, -gain_c * 100, 0, day)
            if fee_c:
                journal(pool_id, None, vid, None, "fee_expense", None, fee_c * 100, 0, day)
                journal(pool_id, None, vid, None, "fees_payable", None, -fee_c * 100, 0, day)
            previous_day = day
            # Then the day's flows at that price.
            while k < len(flow_days) and flow_days[k] == index:
                k += 1
                investor = rng.choice(members)
                have = held.get(investor, 0)
                ids["tx"] += 1
                tid = ids["tx"]
                if have > 0 and rng.random() < 0.25:
                    redeem = have if rng.random() < 0.1 else have * rng.randint(10, 60) // 100
                    amount_c = redeem * price // 10_000_000_000
                    if redeem <= 0 or amount_c <= 0:
                        ids["tx"] -= 1
                        continue
                    held[investor] = have - redeem
                    units -= redeem
                    assets_c -= amount_c
                    totals[investor][1] += amount_c
                    tx_rows.append((tid, pool_id, investor, "withdrawal", "settled", amount_c * 100, redeem, price,
                                    "units", day, "import", None, None, None, None, "", None, 1, now, now, 1))
                    journal(pool_id, tid, None, None, "pool", None, -amount_c * 100, redeem, day)
                    journal(pool_id, tid, None, None, "investor", investor, amount_c * 100, -redeem, day)
                else:
                    amount_c = rng.randint(100, 10_000) * 100 + rng.randint(0, 99)
                    issued = _div_he(amount_c * 10_000_000_000, price)
                    held[investor] = have + issued
                    opened.setdefault(investor, len(opened) + 1)
                    totals.setdefault(investor, [0, 0, 0])[0] += amount_c
                    units += issued
                    assets_c += amount_c
                    tx_rows.append((tid, pool_id, investor, "contribution", "settled", amount_c * 100, issued, price,
                                    None, day, "import", now, None, None, None, "", None, 1, now, now, 1))
                    journal(pool_id, tid, None, None, "pool", None, amount_c * 100, -issued, day)
                    journal(pool_id, tid, None, None, "investor", investor, -amount_c * 100, issued, day)
            if day in distribution_days and units > 0:
                total_c = units * 25 // 1_000_000  # about 0.25 a unit
                holders = sorted((opened[i], i, u) for i, u in held.items() if u > 0)
                shares = [total_c * u // units for _, _, u in holders]
                remainders = sorted(range(len(holders)), key=lambda j: (-(total_c * holders[j][2] % units), j))
                for j in remainders[: total_c - sum(shares)]:
                    shares[j] += 1
                ids["distribution"] += 1
                did = ids["distribution"]
                price_after = _div_he((nav_c - total_c) * 10_000_000_000, units)
                distribution_rows.append((did, pool_id, day, total_c * 100, _div_he(total_c * 10_000_000_000, units),
                                          units, price_after, "", 1, now))
                assets_c -= total_c
                nav_c -= total_c
                price = price_after
                journal(pool_id, None, None, did, "pool", None, -total_c * 100, 0, day)
                for (_, investor, _), share in zip(holders, shares):
                    if not share:
                        continue
                    ids["tx"] += 1
                    tx_rows.append((ids["tx"], pool_id, investor, "distribution", "settled", share * 100, None,
                                    price_after, None, day, "system", None, did, None, None, "", None, 1, now, now, 1))
                    journal(pool_id, None, None, did, "distribution", investor, share * 100, 0, day)
                    totals[investor][2] += share
        pool_rows.append((pool_id, f"B{pool_id:03d}", f"Bench pool {pool_id}", currency, "", "open", 10_000_000,
                          "latest", 0, bps, 0, INCEPTION, units, assets_c * 100, fees_c * 100, price, None, LAST_DAY,
                          LAST_DAY, len(journal_rows), now, 1))
        for investor, seq in opened.items():
            c, w, d = totals[investor]
            position_rows.append((pool_id, investor, held[investor], c * 100, w * 100, d * 100, False, seq, 1))

    copies = [
        ("users (id, email, name, role, status, failed_logins, created_at, version)", users),
        ("pools (id, code, name, currency, strategy, status, initial_unit_price, pricing_policy, minimum_contribution,"
         " management_fee_bps, performance_fee_rate, inception_date, units_outstanding, total_assets, fees_payable,"
         " nav_per_unit, high_water_mark, last_valuation_date, last_flow_date, ledger_version, created_at, version)",
         pool_rows),
        ("pool_managers (pool_id, user_id)", [(p[0], 1) for p in pool_rows]),
        ("positions (pool_id, investor_id, units, contributed, withdrawn, distributions, reinvest_distributions,"
         " opened_seq, version)", position_rows),
        ("valuations (id, pool_id, valuation_date, total_assets, nav_before_fees, management_fee, performance_fee, nav,"
         " units_outstanding, nav_per_unit, high_water_mark, note, created_by, created_at)", valuation_rows),
        ("distributions (id, pool_id, record_date, total, per_unit, units_outstanding, nav_per_unit_after, note,"
         " created_by, created_at)", distribution_rows),
        ("transactions (id, pool_id, investor_id, kind, status, amount, units, price, withdrawal_mode, effective_date,"
         " source, payment_received_at, distribution_id, reverses_id, failure_reason, note, idempotency_key,"
         " created_by, created_at, settled_at, version)", tx_rows),
        ("journal_entries (id, pool_id, transaction_id, valuation_id, distribution_id, account, investor_id, amount,"
         " units, effective_date, created_at)", journal_rows),
    ]
    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            for target, rows in copies:
                with cur.copy(f"COPY {target} FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            for table in ("users", "pools", "valuations", "distributions", "transactions", "journal_entries"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            cur.execute("ANALYZE")
        conn.commit()
    return {"pools": len(pool_rows), "investors": investors, "transactions": len(tx_rows),
            "valuations": len(valuation_rows), "journal_entries": len(journal_rows),
            "distributions": len(distribution_rows), "positions": len(position_rows)}
