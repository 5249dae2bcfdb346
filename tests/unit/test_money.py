"""Money parsing and rounding: the one door amounts, units and prices enter by."""
from decimal import Decimal

import pytest

from core.domain.errors import ValidationError
from core.domain.money import (
    ROUND_CEILING, ROUND_FLOOR, divide, format_money, minor_units, money_quantum, multiply, parse_amount,
    parse_price, parse_units, round_money, to_decimal,
)

D = Decimal


@pytest.mark.parametrize("text, expected", [
    ("100", D("100.00")),
    ("100.5", D("100.50")),
    (" 1,234.56 ", D("1234.56")),
    ("1,000,000", D("1000000.00")),
    ("12,34,567.50", D("1234567.50")),  # Indian grouping (INR)
    ("10.010", D("10.01")),  # trailing zeros are not extra precision
    (D("0.01"), D("0.01")),
    (7, D("7.00")),
    ("1000000000000", D("1000000000000.00")),  # exactly 1e12 is allowed
])
def test_parse_amount_accepts_exact_values(text, expected):
    value = parse_amount(text, "USD")
    assert value == expected
    assert str(value) == str(expected)  # quantized to the currency's two places
    assert type(value) is Decimal


@pytest.mark.parametrize("value, message", [
    ("0", "amount must be greater than zero."),
    ("-5", "amount must be greater than zero."),
    ("abc", "amount: 'abc' is not a number."),
    ("NaN", "amount: 'NaN' is not a finite number."),
    ("Infinity", "amount: 'Infinity' is not a finite number."),
    ("-Infinity", "amount: '-Infinity' is not a finite number."),
    (D("NaN"), "amount: Decimal('NaN') is not a finite number."),
    ("1000000000000.01", "amount must not exceed 1,000,000,000,000."),
    # issue 10 point 11: exponents, underscores and separators out of place are not amounts
    ("1e13", "amount: '1e13' is in exponent notation; write the number out in digits, e.g. 1000."),
    ("1e3", "amount: '1e3' is in exponent notation; write the number out in digits, e.g. 1000."),
    ("2.5E+2", "amount: '2.5E+2' is in exponent notation; write the number out in digits, e.g. 1000."),
    ("1_000", "amount: '1_000' has an underscore; write the number without it, e.g. 1000 or 1,000."),
    ("12,3456", "amount: '12,3456' has a thousands separator out of place; write e.g. 1,234,567.89 or "
                "1234567.89."),
    ("1,234,56,789", "amount: '1,234,56,789' has a thousands separator out of place; write e.g. 1,234,567.89 or "
                     "1234567.89."),
    ("\u0661\u0662\u0663", "amount: '\u0661\u0662\u0663' is not a number."),  # Arabic-Indic digits
    ("1 000", "amount: '1 000' is not a number."),
    ("10.001", "amount: USD has 2 decimal places; 10.001 has more."),
    ("", "amount is required."),
    (None, "amount: None is not a number."),
    # a decimal comma is not a thousands separator: "1,5" must not become 15
    ("1,5", "amount: '1,5' is not a number; use a point for decimals, e.g. 1234.56."),
    ("10,25", "amount: '10,25' is not a number; use a point for decimals, e.g. 1234.56."),
    ("1,0000", "amount: '1,0000' has a thousands separator out of place; write e.g. 1,234,567.89 or 1234567.89."),
    (True, "amount: give an exact number as text or Decimal, not a float."),
    (1.5, "amount: give an exact number as text or Decimal, not a float."),
])
def test_parse_amount_refuses_bad_input(value, message):
    with pytest.raises(ValidationError) as err:
        parse_amount(value, "USD")
    assert err.value.message == message
    assert err.value.field == "amount"


def test_zero_is_allowed_only_when_asked():
    assert parse_amount("0", "USD", allow_zero=True) == D("0.00")
    with pytest.raises(ValidationError):
        parse_amount("-0.01", "USD", allow_zero=True)


def test_currency_minor_units_decide_the_decimals():
    assert parse_amount("100", "JPY") == D("100")
    with pytest.raises(ValidationError, match="JPY has 0 decimal places; 100.5 has more."):
        parse_amount("100.5", "JPY")
    assert parse_amount("1.234", "KWD") == D("1.234")
    with pytest.raises(ValidationError, match="KWD has 3 decimal places"):
        parse_amount("1.2345", "KWD")
    assert minor_units("EUR") == 2
    assert money_quantum("JPY") == D("1")
    with pytest.raises(ValidationError, match="Unknown currency 'XYZ'"):
        minor_units("XYZ")


def test_parse_units_and_price():
    assert parse_units("1.5") == D("1.500000")
    assert parse_units("0.000001") == D("0.000001")
    with pytest.raises(ValidationError, match="units: units have at most 6 decimal places."):
        parse_units("0.0000001")
    with pytest.raises(ValidationError, match="units must be greater than zero."):
        parse_units("0")
    with pytest.raises(ValidationError, match="units is too large."):
        parse_units("9000000000001")
    assert parse_price("10") == D("10.000000")
    with pytest.raises(ValidationError, match="unit price must be greater than zero."):
        parse_price("-1")
    with pytest.raises(ValidationError, match="at most 6 decimal places"):
        parse_price("1.0000001")


def test_to_decimal_never_takes_a_float():
    with pytest.raises(ValidationError, match="not a float"):
        to_decimal(0.1)
    assert to_decimal("0.1") + to_decimal("0.2") == D("0.3")


def test_rounding_helpers():
    assert divide(D("100"), D("3"), D("0.000001")) == D("33.333333")
    assert divide(D("200"), D("3"), D("0.000001")) == D("66.666667")
    assert divide(D("100"), D("3"), D("0.000001"), ROUND_CEILING) == D("33.333334")
    assert multiply(D("1.999999"), D("3.33"), D("0.01"), ROUND_FLOOR) == D("6.65")
    # half-even: ties go to the even digit
    assert round_money(D("0.125"), "USD") == D("0.12")
    assert round_money(D("0.135"), "USD") == D("0.14")
    # 50 significant digits: no silent loss on big numbers
    assert divide(D("999999999999.99"), D("7"), D("0.000001")) == D("142857142857.141429")


def test_format_money():
    assert format_money(D("1234567.8"), "USD") == "USD 1,234,567.80"
    assert format_money(D("1234"), "JPY") == "JPY 1,234"
