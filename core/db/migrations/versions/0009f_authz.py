"""Trust fixes of issue 10 (access and payment data): two clean-ups of data written before them.

* ``sandbox_charges.account`` kept the full card or account number the sandbox gateway was
  called with. It now keeps what a real gateway shows back, the brand and the last four
  digits (``visa ending 4242``); rows written before are masked the same way.
* A user whose role changed away from manager or admin kept their ``pool_managers`` rows,
  and the one-trip posting in the database (migration 0007) still let them post flows.
  ``change_role`` now ends them; rows left by earlier role changes are removed here.

Neither can be undone: the downgrade leaves the data as it is.

Revision ID: 0009f_authz
Revises: 0008_journal_indexes
"""
import sqlalchemy as sa
from alembic import op

revision = "0009f_authz"
down_revision = "0009e_mfa"
branch_labels = None
depends_on = "0003_jobs"  # sandbox_charges is made there, on the jobs branch

BRANDS = ("visa", "mastercard", "amex", "discover", "card", "account")


def _brand(number: str) -> str:
    # the same rules as jobs.gateways.sandbox.card_brand, kept here as they were when this ran
    if not (number.isdigit() and 12 <= len(number) <= 19):
        return "account"
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("34", "37"):
        return "amex"
    if 51 <= int(number[:2]) <= 55 or 2221 <= int(number[:4]) <= 2720:
        return "mastercard"
    if number.startswith(("6011", "65")) or 644 <= int(number[:3]) <= 649:
        return "discover"
    return "card"


def _masked(account: str) -> str:
    account = "".join(ch for ch in (account or "") if ch.isalnum())
    if not account:
        return ""
    if len(account) <= 8:
        return _brand(account)
    return f"{_brand(account)} ending {account[-4:]}"


def _already_masked(account: str) -> bool:
    brand, _, rest = (account or "").partition(" ending ")
    return not account or account in BRANDS or (brand in BRANDS and len(rest) == 4)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, account FROM sandbox_charges")).all()
    for charge_id, account in rows:
        if not _already_masked(account):
            conn.execute(sa.text("UPDATE sandbox_charges SET account = :a WHERE id = :id"),
                         {"a": _masked(account), "id": charge_id})
    conn.execute(sa.text("DELETE FROM pool_managers WHERE user_id IN "
                         "(SELECT id FROM users WHERE role NOT IN ('manager', 'admin'))"))


def downgrade() -> None:
    """Nothing to undo: the full numbers are gone, and the removed assignments were not valid."""
