"""The one list of pages and the roles that may open each.

``main.py`` builds ``st.navigation`` from ``pages_for(role)``. Pages owned by other
parts of the project (operations, analytics, reports) are listed only once their
file exists, so the registry is right before and after they land.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"
ALL_ROLES = ("admin", "manager", "investor", "analyst")


@dataclass(frozen=True)
class PageSpec:
    file: str
    title: str
    icon: str
    roles: tuple[str, ...]
    url_path: str
    optional: bool = False  # listed only when the file exists

    @property
    def path(self) -> Path:
        return PAGES_DIR / self.file


REGISTRY: tuple[PageSpec, ...] = (
    PageSpec("overview.py", "Overview", ":material/dashboard:", ALL_ROLES, "overview"),
    PageSpec("portfolio.py", "My portfolio", ":material/account_balance_wallet:", ("investor",), "portfolio"),
    PageSpec("pools.py", "Pools", ":material/savings:", ("admin", "manager", "analyst"), "pools"),
    PageSpec("pool_detail.py", "Pool detail", ":material/monitoring:", ("admin", "manager", "analyst"), "pool"),
    PageSpec("transactions.py", "Transactions", ":material/swap_horiz:", ("admin", "manager"), "transactions"),
    PageSpec("analytics.py", "Analytics", ":material/query_stats:", ("analyst", "manager", "admin"), "analytics",
             optional=True),
    PageSpec("reports.py", "Reports", ":material/description:", ALL_ROLES, "reports", optional=True),
    PageSpec("notifications.py", "Notifications", ":material/notifications:", ALL_ROLES, "notifications"),
    PageSpec("operations.py", "Operations", ":material/build:", ("admin",), "operations", optional=True),
    PageSpec("admin.py", "Admin", ":material/admin_panel_settings:", ("admin",), "admin"),
    PageSpec("account.py", "Account", ":material/person:", ALL_ROLES, "account"),
)


def existing_pages() -> list[PageSpec]:
    """Every page whose file exists, whoever may open it."""
    return [p for p in REGISTRY if not p.optional or p.path.exists()]


def pages_for(role: str) -> list[PageSpec]:
    """The pages a role may see, in menu order; the first is the landing page."""
    return [p for p in REGISTRY if role in p.roles and (not p.optional or p.path.exists())]
