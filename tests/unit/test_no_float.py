"""Money never touches float.

Two checks: a static scan of core/ (no ``float(...)`` call and no float literal
in money code), and a dynamic one: every number the services hand back (views,
previews, distribution parts) is a Decimal, on both databases.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"

# Places where a float is the right tool, each with the reason. Anything else in core/ is money code.
ALLOWED = {
    "domain/returns.py": "XIRR is solved numerically in float (pyxirr); inputs and result are Decimal",
    "services/demo.py": "demo data: a random walk drawn with random.gauss, converted to Decimal through str",
    "analytics/pdf.py": "drawing: PDF layout sizes and chart coordinates",
    "services/import_columns.py": "overflow guards: a float64 sum only decides whether exact int64 arithmetic is "
                                  "safe; amounts themselves stay scaled integers",
}
# Elsewhere a single line may use a float when it says why, e.g. "# floats only for the solver", "# chart only".
JUSTIFIED = re.compile(r"#.*\b(floats? only for|chart only)\b")
# A float literal is fine as a sleep time (retry backoff) or a timeout, nowhere else.
SLEEP_CALLS = {"sleep"}
TIME_KEYWORDS = {"timeout", "interval", "poll_interval"}


def _float_uses(tree: ast.AST, source: str = "") -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    sleep_args: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in SLEEP_CALLS:
                for inner in ast.walk(node):
                    sleep_args.add(id(inner))
            for keyword in node.keywords:
                if keyword.arg in TIME_KEYWORDS:
                    sleep_args.update(id(inner) for inner in ast.walk(keyword.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float":
            found.append((node.lineno, "float() call"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, float) and id(node) not in sleep_args:
            found.append((node.lineno, f"float literal {node.value!r}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_float":
            found.append((node.lineno, "Decimal.from_float"))
        elif isinstance(node, ast.Attribute) and node.attr in ("float64", "float32", "float16"):
            found.append((node.lineno, f"numpy {node.attr}"))
    lines = source.splitlines()
    return sorted(set((line, what) for line, what in found
                      if not (lines and JUSTIFIED.search(lines[line - 1]))))


def _money_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py")
                  if "migrations" not in p.parts and str(p.relative_to(CORE)) not in ALLOWED)


def test_the_scan_finds_what_it_looks_for():
    sample = ("import time\nx = float(y)\nrate = 0.2\ntime.sleep(0.5)\nz = Decimal.from_float(1)\n"
              "a = v.astype(np.float64)\nb = float(p)  # chart only\nc = float(q)  # a float, sadly\n"
              "q.put(item, timeout=0.5)\nfee = amount * 0.01\n")
    assert _float_uses(ast.parse(sample), sample) == [
        (2, "float() call"), (3, "float literal 0.2"), (5, "Decimal.from_float"), (6, "numpy float64"),
        (8, "float() call"), (10, "float literal 0.01")]


def test_core_money_code_has_no_float():
    modules = _money_modules()
    assert any(p.name == "accounting.py" for p in modules) and any(p.name == "ledger.py" for p in modules)
    offences = [f"{p.relative_to(CORE)}:{line}: {what}" for p in modules
                for line, what in _float_uses(ast.parse(p.read_text()), p.read_text())]
    assert offences == []


def test_allowed_exceptions_still_exist():
    # An exemption for a file that is gone would silently widen the scan's blind spot.
    for relative in ALLOWED:
        assert (CORE / relative).exists(), relative


def test_fixed_columns_refuse_floats():
    from core.db.types import Money

    with pytest.raises(TypeError, match="never float"):
        Money().process_bind_param(1.5, None)
    with pytest.raises(ValueError, match="more than 4 decimal places"):
        Money().process_bind_param(Decimal("1.00001"), None)
    assert Money().process_bind_param(Decimal("12.34"), None) == 123400
    assert Money().process_result_value(123400, None) == Decimal("12.34")


def test_services_refuse_float_amounts(db):
    from core.domain.errors import ValidationError
    from core.services import ledger
    from tests.factories import make_pool, make_user

    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager)
    with pytest.raises(ValidationError, match="not a float"):
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount=100.0,
                                   key=None, effective_date=date(2024, 1, 2), payment="received")


def _numbers(obj) -> dict[str, object]:
    """Every numeric field of a service result (dataclass), recursively."""
    out: dict[str, object] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{field.name}.{k}": v for k, v in _numbers(value).items()})
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                out.update({f"{field.name}[{i}].{k}": v for k, v in _numbers(item).items()})
        elif isinstance(value, (float, Decimal)):
            out[field.name] = value
    return out


def test_service_results_carry_decimals(db):
    from core.services import ledger, pools, valuations
    from tests.factories import make_pool, make_user

    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, management_fee_bps=100, performance_fee_pct="10")
    results = [pool]
    results.append(ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                              amount="1000", key=None, effective_date=date(2024, 1, 2),
                                              payment="received"))
    results.append(valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                               total_assets="1100", key=None, preview=True))
    results.append(valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1),
                                               total_assets="1100", key=None))
    results.append(ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                            amount="10", key=None, effective_date=date(2024, 2, 2), payment="received"))
    results.append(valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date(2024, 2, 3),
                                                   total="5", key=None, preview=True))
    results.append(valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date(2024, 2, 3),
                                                   total="5", key=None))
    results.append(pools.get_pool(db, actor=manager, pool_id=pool.id))
    results += ledger.list_transactions(db, actor=manager, pool_id=pool.id)
    checked = 0
    for result in results:
        for name, value in _numbers(result).items():
            assert type(value) is Decimal, f"{type(result).__name__}.{name} is {type(value).__name__}"
            checked += 1
    assert checked > 40
    for row in valuations.get_valuations(db, actor=manager, pool_id=pool.id):
        for column in ("total_assets", "nav", "nav_per_unit", "management_fee", "performance_fee", "units_outstanding"):
            assert type(getattr(row, column)) is Decimal, column
