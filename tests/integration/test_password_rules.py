"""Password rules: hard to guess (zxcvbn, offline), never the account's email, at most 72 bytes (bcrypt's limit),
the same at every place a password is set."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.db.models import User
from core.domain.errors import AuthenticationError, ValidationError
from core.services import auth, users
from tests.factories import PASSWORD, make_user, system

GUESSABLE = ["password12", "1234567890", "aaaaaaaaaa"]


@pytest.mark.parametrize("password", GUESSABLE)
def test_common_and_repetitive_passwords_are_refused_with_advice(password):
    with pytest.raises(ValidationError) as refused:
        users.check_password_strength(password, email="mia@example.com", name="Mia Stone")
    assert refused.value.field == "password"
    assert refused.value.message.startswith("This password is easy to guess.")
    assert len(refused.value.message) > len("This password is easy to guess. ")  # the library's advice follows


def test_the_accounts_own_email_is_refused():
    with pytest.raises(ValidationError) as refused:
        users.check_password_strength("Mia.Stone@Example.com", email="mia.stone@example.com", name="Mia Stone")
    assert refused.value.message == "The password cannot be your email address."


def test_a_good_passphrase_passes():
    users.check_password_strength("violet-kettle-marching-ant", email="mia@example.com", name="Mia Stone")
    users.check_password_strength(PASSWORD, email="mia@example.com", name="Mia Stone")


def test_a_password_over_72_bytes_is_refused_since_bcrypt_would_ignore_the_rest(db):
    base = "violet-kettle-marching-ant " * 3  # 81 characters
    first, second = base[:72] + "1", base[:72] + "2"  # differ only after byte 72
    for password in (first, "é" * 40):  # 40 characters, 80 bytes
        with pytest.raises(ValidationError) as refused:
            make_user(db, "investor", email="long@example.com", password=password)
        assert refused.value.message == (
            "The password is too long: at most 72 bytes (72 plain letters, fewer with accents or emoji).")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.email == "long@example.com")) == 0
    make_user(db, "investor", email="long@example.com", password=base[:72])  # 72 bytes is fine
    assert users.authenticate(db, email="long@example.com", password=base[:72])
    with pytest.raises(ValidationError, match="too long"):  # nor can it become the longer one later
        users.set_password(db, actor=system(db), user_id=users.find_user_by_email(db, "long@example.com").id,
                           password=second)


def test_existing_hashes_keep_working(db):
    """Hashes written before these rules (a weak password, say) still sign in; the rules apply when setting."""
    import bcrypt

    investor = make_user(db, "investor")
    with db.transaction() as session:
        session.get(User, investor.id).password_hash = bcrypt.hashpw(b"password12", bcrypt.gensalt(4)).decode()
    assert users.authenticate(db, email=investor.email, password="password12").id == investor.id


@pytest.mark.parametrize("place", ["create_user", "set_password", "change_password", "reset_password",
                                   "accept_invitation"])
@pytest.mark.parametrize("password", ["password12", "own-email"])
def test_every_place_a_password_is_set_applies_the_rules(db, place, password):
    admin = make_user(db, "admin")
    investor = make_user(db, "investor", email="ivo.vance@example.com")
    invited = auth.invite_user(db, actor=admin, email="nia.north@example.com", name="Nia North", role="analyst")
    own_email = {"accept_invitation": "nia.north@example.com", "create_user": "new.one@example.com"}.get(
        place, "ivo.vance@example.com")
    password = own_email if password == "own-email" else password
    reset_link = auth.issue_reset_link(db, actor=admin, user_id=investor.id)
    calls = {
        "create_user": lambda: users.create_user(db, actor=system(db), email="new.one@example.com", name="New One",
                                                 role="analyst", password=password),
        "set_password": lambda: users.set_password(db, actor=admin, user_id=investor.id, password=password),
        "change_password": lambda: auth.change_password(db, actor=investor, current_password=PASSWORD,
                                                        new_password=password),
        "reset_password": lambda: auth.reset_password(db, token=reset_link.split("=", 1)[1], password=password),
        "accept_invitation": lambda: auth.accept_invitation(db, token=invited.link.split("=", 1)[1],
                                                            password=password),
    }
    with pytest.raises(ValidationError) as refused:
        calls[place]()
    assert refused.value.field == "password"
    with pytest.raises(AuthenticationError):
        users.authenticate(db, email=own_email, password=password)
    assert users.authenticate(db, email="ivo.vance@example.com", password=PASSWORD).id == investor.id


def test_the_cli_refuses_a_guessable_password(db):
    from click.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["user", "create", "--email", "boss@example.com", "--name", "Boss", "--role",
                                      "admin"], input="1234567890\n")
    assert result.exit_code == 1
    assert "This password is easy to guess." in result.output


def test_the_demo_password_passes_for_every_demo_sign_in():
    from core.services.demo import DEMO_LOGINS, DEMO_PASSWORD

    for email, name, _ in DEMO_LOGINS:
        users.check_password_strength(DEMO_PASSWORD, email=email, name=name)
