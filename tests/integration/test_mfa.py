"""Two-step sign-in (TOTP and recovery codes) and re-authentication for sensitive operations."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pyotp
import pytest
from sqlalchemy import select, text

from core.config import ConfigurationError, Settings, reset_settings_cache
from core.db.models import AuditEvent, RecoveryCode, User, utcnow
from core.domain.errors import (
    AuthenticationError, PermissionDenied, ReauthenticationRequired, ValidationError,
)
from core.services import auth, ledger, mfa, users
from tests.factories import PASSWORD, make_pool, make_user, signed_in, system


def at_step(totp: pyotp.TOTP, step: int) -> datetime:
    return datetime.fromtimestamp(step * totp.interval, timezone.utc)


def enrol(db, user, when: datetime | None = None) -> tuple[pyotp.TOTP, list[str], int]:
    """Enrol ``user`` during a sign-in at ``when``; the app's TOTP, the recovery codes and the step used."""
    when = when or utcnow()
    token = auth.create_session(db, actor=user, now=when)
    secret = mfa.start_enrolment(db, token=token, now=when).secret
    totp = pyotp.TOTP(secret)
    done = mfa.confirm_enrolment(db, token=token, code=totp.at(when), now=when)
    return totp, done.recovery_codes, totp.timecode(when)


def actions(db, action: str) -> list[AuditEvent]:
    with db.read() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


# --- sign-in ---------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["manager", "admin"])
def test_a_manager_or_admin_without_a_second_factor_must_enrol_before_the_session_signs_in(db, role):
    user = make_user(db, role)
    token = auth.create_session(db, actor=user)
    assert auth.validate_session(db, token=token) is None  # the password alone signs nobody in
    assert mfa.second_factor_step(db, token=token) == "enrol"
    enrolment = mfa.start_enrolment(db, token=token)
    assert enrolment.uri.startswith("otpauth://totp/Pooldesk:") and enrolment.secret in enrolment.uri
    assert enrolment.qr_png().startswith(b"\x89PNG")
    totp = pyotp.TOTP(enrolment.secret)
    wrong = str((int(totp.now()) + 1) % 1_000_000).zfill(6)
    with pytest.raises(ValidationError, match="That code is not right"):
        mfa.confirm_enrolment(db, token=token, code=wrong)
    assert auth.validate_session(db, token=token) is None
    done = mfa.confirm_enrolment(db, token=token, code=totp.now())
    assert len(done.recovery_codes) == 10 and len(set(done.recovery_codes)) == 10
    assert auth.validate_session(db, token=token) == user
    assert [e.after for e in actions(db, "mfa.enable")] == [{"mfa": True}]

    # the next sign-in asks for a code, and only a right one finishes it
    second = auth.create_session(db, actor=user)
    assert auth.validate_session(db, token=second) is None
    assert mfa.second_factor_step(db, token=second) == "code"
    with pytest.raises(AuthenticationError, match="That code is not right"):
        mfa.verify(db, token=second, code="000000" if totp.now() != "000000" else "111111")
    assert auth.validate_session(db, token=second) is None
    later = utcnow() + timedelta(seconds=30)
    assert mfa.verify(db, token=second, code=totp.at(later), now=later) == user
    assert auth.validate_session(db, token=second, now=later) == user


def test_a_code_is_accepted_one_step_either_way_and_never_twice(db):
    manager = make_user(db, "manager")
    start = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
    totp, _, step = enrol(db, manager, start)
    moment = at_step(totp, step + 10)

    def attempt(code: str) -> bool:
        token = auth.create_session(db, actor=manager, now=moment)
        try:
            mfa.verify(db, token=token, code=code, now=moment)
        except AuthenticationError:
            return False
        return True

    assert attempt(totp.at(at_step(totp, step + 9)))  # the previous step's code (a slow typist)
    assert not attempt(totp.at(at_step(totp, step + 9)))  # the same code again: refused
    assert not attempt(totp.at(at_step(totp, step + 8)))  # two steps old
    assert not attempt(totp.at(at_step(totp, step + 12)))  # two steps ahead
    assert attempt(totp.at(at_step(totp, step + 10)))
    assert not attempt(totp.at(at_step(totp, step + 10)))  # replayed in the same 30 seconds
    assert attempt(totp.at(at_step(totp, step + 11)).replace("", " ").strip())  # spaces are ignored


def test_a_recovery_code_works_once_is_audited_and_a_new_set_replaces_the_old(db):
    manager = make_user(db, "manager")
    _, codes, _ = enrol(db, manager)
    token = auth.create_session(db, actor=manager)
    assert mfa.verify(db, token=token, code=codes[0].upper()) == manager
    assert auth.validate_session(db, token=token) == manager
    assert [e.after for e in actions(db, "mfa.recovery_code_use")] == [{"codes_left": 9}]
    again = auth.create_session(db, actor=manager)
    with pytest.raises(AuthenticationError):
        mfa.verify(db, token=again, code=codes[0])
    assert mfa.status(db, actor=manager).recovery_codes_left == 9

    acting, _ = signed_in(db, manager, reauthenticated=True)
    fresh = mfa.regenerate_recovery_codes(db, actor=acting)
    assert len(fresh) == 10 and not set(fresh) & set(codes)
    assert len(actions(db, "mfa.recovery_codes_regenerate")) == 1
    with pytest.raises(AuthenticationError):
        mfa.verify(db, token=again, code=codes[1])  # the old set no longer works
    assert mfa.verify(db, token=again, code=fresh[3]) == manager


def test_new_recovery_codes_need_a_recent_reauthentication(db):
    manager = make_user(db, "manager")
    acting, _ = signed_in(db, manager)
    with pytest.raises(ReauthenticationRequired):
        mfa.regenerate_recovery_codes(db, actor=acting)


def test_the_secret_is_stored_encrypted_and_recovery_codes_only_as_digests(db):
    manager = make_user(db, "manager")
    totp, codes, _ = enrol(db, manager)
    with db.read() as session:
        stored = session.execute(text("SELECT mfa_secret FROM users WHERE id = :id"), {"id": manager.id}).scalar()
        digests = session.scalars(select(RecoveryCode.code_digest)).all()
    assert stored and totp.secret not in stored
    assert len(digests) == 10
    plain = {c.replace("-", "") for c in codes}
    assert not plain & set(digests) and not any(p in d for p in plain for d in digests)


def test_wrong_codes_count_toward_the_lockout(db):
    manager = make_user(db, "manager")
    start = utcnow()
    totp, _, step = enrol(db, manager, start)
    later = at_step(totp, step + 2)
    token = auth.create_session(db, actor=manager, now=later)
    good = totp.at(later)
    bad = str((int(good) + 1) % 1_000_000).zfill(6)
    users.authenticate(db, email=manager.email, password=PASSWORD, now=later)
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            mfa.verify(db, token=token, code=bad, now=later)
    with pytest.raises(AuthenticationError):  # locked: even the right code is refused
        mfa.verify(db, token=token, code=good, now=later)
    with pytest.raises(AuthenticationError):  # and the right password too
        users.authenticate(db, email=manager.email, password=PASSWORD, now=later)
    assert len(actions(db, "user.locked")) == 1


@pytest.mark.parametrize("role", ["investor", "analyst"])
def test_investors_and_analysts_may_enrol_and_are_then_asked_for_a_code(db, role):
    user = make_user(db, role)
    token = auth.create_session(db, actor=user)
    assert auth.validate_session(db, token=token) == user  # no second factor needed
    acting = auth.validate_session(db, token=token)
    assert mfa.status(db, actor=acting).enabled is False
    totp = pyotp.TOTP(mfa.start_enrolment(db, actor=acting).secret)
    done = mfa.confirm_enrolment(db, actor=acting, code=totp.now())
    assert len(done.recovery_codes) == 10
    assert auth.validate_session(db, token=token) == user  # the open session stays signed in
    nxt = auth.create_session(db, actor=user)
    assert auth.validate_session(db, token=nxt) is None
    assert mfa.second_factor_step(db, token=nxt) == "code"


def test_a_waiting_sign_in_expires(db):
    manager = make_user(db, "manager")
    start = utcnow()
    token = auth.create_session(db, actor=manager, now=start)
    with pytest.raises(AuthenticationError, match="Sign in again"):
        mfa.start_enrolment(db, token=token, now=start + timedelta(minutes=11))


def test_an_admin_resets_someones_second_factor_and_they_enrol_again(db):
    admin, manager, investor = make_user(db, "admin"), make_user(db, "manager"), make_user(db, "investor")
    _, token = signed_in(db, manager)
    with pytest.raises(PermissionDenied):
        mfa.reset(db, actor=investor, user_id=manager.id)
    with pytest.raises(ValidationError, match="another admin"):
        mfa.reset(db, actor=admin, user_id=admin.id)
    mfa.reset(db, actor=admin, user_id=manager.id)
    assert auth.validate_session(db, token=token) is None  # signed out everywhere
    assert [(e.actor_id, e.before, e.after) for e in actions(db, "mfa.reset")] == [
        (admin.id, {"mfa": True}, {"mfa": False})]
    assert mfa.second_factor_step(db, token=auth.create_session(db, actor=manager)) == "enrol"
    with db.read() as session:
        assert session.scalar(select(RecoveryCode.id).where(RecoveryCode.user_id == manager.id)) is None


def test_requiring_a_second_factor_can_be_switched_off_outside_production_only(db, monkeypatch):
    monkeypatch.setenv("POOLDESK_REQUIRE_MFA", "false")
    reset_settings_cache()
    manager = make_user(db, "manager")
    assert auth.validate_session(db, token=auth.create_session(db, actor=manager)) == manager
    with pytest.raises(ConfigurationError, match="POOLDESK_REQUIRE_MFA=false"):
        Settings(env="production", secret_key="s" * 40, database_url="postgresql://x/y", require_mfa=False)


# --- re-authentication -----------------------------------------------------------------------

def _withdrawal_request(db, amount: str):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="50000.00",
                               key=None, effective_date=date(2024, 1, 2), payment="received")
    request = ledger.record_withdrawal(db, actor=investor, pool_id=pool.id, investor_id=investor.id, key=None,
                                       amount=amount, effective_date=date(2024, 1, 3), payment="gateway")
    assert request.status == "requested"
    return manager, pool, request


@pytest.mark.parametrize("role", ["manager", "admin"])
def test_approving_a_large_withdrawal_needs_a_recent_reauthentication(db, role):
    manager, pool, request = _withdrawal_request(db, "10000.00")
    approver = manager if role == "manager" else make_user(db, "admin")
    acting, _ = signed_in(db, approver)
    with pytest.raises(ReauthenticationRequired, match="approve a withdrawal of USD 10,000.00 or more"):
        ledger.approve_request(db, actor=acting, transaction_id=request.id, expected_version=request.version,
                               payment="received")
    assert ledger.get_transaction(db, actor=acting, transaction_id=request.id).status == "requested"
    mfa.reauthenticate(db, actor=acting, password=PASSWORD)
    done = ledger.approve_request(db, actor=acting, transaction_id=request.id, expected_version=request.version,
                                  payment="received")
    assert done.status == "settled"


def test_a_smaller_withdrawal_is_approved_without_reauthentication(db):
    manager, pool, request = _withdrawal_request(db, "9999.99")
    acting, _ = signed_in(db, manager)
    done = ledger.approve_request(db, actor=acting, transaction_id=request.id, expected_version=request.version,
                                  payment="received")
    assert done.status == "settled"


def test_the_threshold_and_the_window_are_settings(db, monkeypatch):
    monkeypatch.setenv("POOLDESK_REAUTH_WITHDRAWAL_THRESHOLD", "500")
    monkeypatch.setenv("POOLDESK_REAUTH_MINUTES", "2")
    reset_settings_cache()
    manager, pool, request = _withdrawal_request(db, "600.00")
    acting, _ = signed_in(db, manager)
    mfa.reauthenticate(db, actor=acting, password=PASSWORD, now=utcnow() - timedelta(minutes=3))
    with pytest.raises(ReauthenticationRequired, match="USD 500.00 or more.*after 2 minutes"):
        ledger.approve_request(db, actor=acting, transaction_id=request.id, expected_version=request.version,
                               payment="received")
    mfa.reauthenticate(db, actor=acting, password=PASSWORD, now=utcnow() - timedelta(minutes=1))
    assert ledger.approve_request(db, actor=acting, transaction_id=request.id, expected_version=request.version,
                                  payment="received").status == "settled"


def test_a_role_change_needs_a_recent_reauthentication(db):
    admin, person = make_user(db, "admin"), make_user(db, "analyst")
    acting, _ = signed_in(db, admin)
    with pytest.raises(ReauthenticationRequired, match="to change a role"):
        users.change_role(db, actor=acting, user_id=person.id, role="manager", expected_version=1)
    assert users.get_user(db, actor=acting, user_id=person.id).role == "analyst"
    mfa.reauthenticate(db, actor=acting, password=PASSWORD, now=utcnow() - timedelta(minutes=6))  # too long ago
    with pytest.raises(ReauthenticationRequired):
        users.change_role(db, actor=acting, user_id=person.id, role="manager", expected_version=1)
    mfa.reauthenticate(db, actor=acting, password=PASSWORD)
    assert users.change_role(db, actor=acting, user_id=person.id, role="manager", expected_version=1).role == "manager"


@pytest.mark.parametrize("role", ["admin", "manager", "investor", "analyst"])
def test_changing_ones_bank_account_needs_a_recent_reauthentication(db, role):
    user = make_user(db, role)
    acting, _ = signed_in(db, user)
    me = users.get_user(db, actor=acting, user_id=user.id)
    with pytest.raises(ReauthenticationRequired, match="to change a bank account"):
        users.update_profile(db, actor=acting, user_id=user.id, expected_version=me.version, name=me.name,
                             bank_account="GB33BUKB20201555555555")
    with db.read() as session:
        assert session.get(User, user.id).bank_account is None
    # the rest of the profile needs no re-authentication
    me = users.update_profile(db, actor=acting, user_id=user.id, expected_version=me.version, name="Renamed")
    mfa.reauthenticate(db, actor=acting, password=PASSWORD)
    users.update_profile(db, actor=acting, user_id=user.id, expected_version=me.version, name=me.name,
                         bank_account="GB33BUKB20201555555555")
    with db.read() as session:
        assert session.get(User, user.id).bank_account == "GB33BUKB20201555555555"


def test_an_admin_changing_someones_bank_account_reauthenticates_too(db):
    admin, investor = make_user(db, "admin"), make_user(db, "investor")
    acting, _ = signed_in(db, admin)
    with pytest.raises(ReauthenticationRequired):
        users.update_profile(db, actor=acting, user_id=investor.id, expected_version=1, name=investor.name,
                             bank_account="GB33BUKB20201555555555")
    mfa.reauthenticate(db, actor=acting, password=PASSWORD)
    users.update_profile(db, actor=acting, user_id=investor.id, expected_version=1, name=investor.name,
                         bank_account="GB33BUKB20201555555555")


def test_an_authenticator_code_also_reauthenticates_and_wrong_answers_count_toward_the_lockout(db):
    manager = make_user(db, "manager")
    acting, _ = signed_in(db, manager)
    with db.read() as session:
        row = session.get(User, manager.id)
        totp, last = pyotp.TOTP(row.mfa_secret), row.mfa_last_step
    later = at_step(totp, last + 1)
    mfa.reauthenticate(db, actor=acting, code=totp.at(later), now=later)
    with pytest.raises(ValidationError, match="That password or code is not right"):
        mfa.reauthenticate(db, actor=acting, code=totp.at(later), now=later)  # not twice
    for _ in range(4):
        with pytest.raises(ValidationError):
            mfa.reauthenticate(db, actor=acting, password="not my password")
    with pytest.raises(AuthenticationError):
        users.authenticate(db, email=manager.email, password=PASSWORD)  # locked by the five failures
    assert [e.action for e in actions(db, "session.reauthenticate")] == ["session.reauthenticate"]


def test_a_revoked_session_cannot_use_its_reauthentication_and_server_side_callers_are_not_asked(db):
    admin, person = make_user(db, "admin"), make_user(db, "analyst")
    acting, token = signed_in(db, admin, reauthenticated=True)
    auth.sign_out(db, token=token)
    with pytest.raises(ReauthenticationRequired):
        users.change_role(db, actor=acting, user_id=person.id, role="manager", expected_version=1)
    with pytest.raises(PermissionDenied, match="not a signed-in session"):
        mfa.reauthenticate(db, actor=admin, password=PASSWORD)  # no session to confirm on
    # the `pooldesk` command and the workers act without a browser session
    assert users.change_role(db, actor=system(db), user_id=person.id, role="manager",
                             expected_version=1).role == "manager"
