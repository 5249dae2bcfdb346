"""Who is acting, and the checks every service makes before it reads or writes."""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import PoolManager, User
from core.domain.errors import PermissionDenied

ROLES = ("admin", "manager", "investor", "analyst")
SYSTEM_EMAIL = "system@pooldesk.invalid"


@dataclass(frozen=True)
class Actor:
    id: int
    role: str
    email: str
    name: str = ""
    # The signed-in session acting (its id, a digest of the cookie's token); None for the `pooldesk`
    # command, the workers and tests that call services directly. Sensitive operations read its re-auth time.
    session_id: str | None = field(default=None, compare=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def actor_from_user(user: User) -> Actor:
    return Actor(id=user.id, role=user.role, email=user.email, name=user.name)


def _a(role: str) -> str:
    """'A manager', 'An admin', 'An analyst', 'An investor'."""
    return f"{'An' if role[:1] in 'aeiou' else 'A'} {role}"


def require_role(actor: Actor, *roles: str, action: str = "do this") -> None:
    if actor.role not in roles:
        raise PermissionDenied(f"{_a(actor.role)} may not {action}.")


def manages_pool(session: Session, actor: Actor, pool_id: int) -> bool:
    if actor.role == "admin":
        return True
    if actor.role != "manager":
        return False
    return session.scalar(
        select(PoolManager.pool_id).where(PoolManager.pool_id == pool_id, PoolManager.user_id == actor.id)
    ) is not None


def require_pool_manager(session: Session, actor: Actor, pool_id: int, action: str = "manage this pool") -> None:
    """Writes to a pool: admins, and managers assigned to it."""
    if not manages_pool(session, actor, pool_id):
        raise manager_refusal(actor, action)


def manager_refusal(actor: Actor, action: str) -> PermissionDenied:
    if actor.role == "manager":
        return PermissionDenied(f"You are not a manager of this pool, so you may not {action}.")
    return PermissionDenied(f"{_a(actor.role)} may not {action}.")


def require_pool_reader(session: Session, actor: Actor, pool_id: int) -> None:
    """Pool-wide figures: admins, analysts, the pool's managers. Investors see only their own holdings."""
    if actor.role in ("admin", "analyst"):
        return
    if actor.role == "manager" and manages_pool(session, actor, pool_id):
        return
    raise PermissionDenied("You may not see this pool's figures.")


def require_self_or_pool_manager(session: Session, actor: Actor, pool_id: int, investor_id: int) -> None:
    if actor.role == "investor" and actor.id == investor_id:
        return
    if actor.role in ("admin", "analyst"):
        return
    if actor.role == "manager" and manages_pool(session, actor, pool_id):
        return
    raise PermissionDenied("You may not see another investor's holdings.")
