"""Phone numbers and bank accounts are encrypted at rest, with rotatable keys.

A raw SELECT shows only Fernet tokens; the model gives the plaintext back; with
MultiFernet a new key put first encrypts new writes while old rows still read.
"""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import text

from core.config import reset_settings_cache
from core.db.models import User
from core.services import users
from tests.factories import make_user

PHONE = "+447700900123"
IBAN = "GB33BUKB20201555555555"


def raw(db, user_id) -> tuple[str | None, str | None]:
    with db.read() as session:
        return tuple(session.execute(text("SELECT phone, bank_account FROM users WHERE id = :id"),
                                     {"id": user_id}).one())


def use_keys(monkeypatch, *keys: bytes) -> None:
    monkeypatch.setenv("POOLDESK_ENCRYPTION_KEYS", ",".join(k.decode() for k in keys))
    reset_settings_cache()


def save_profile(db, actor, phone=PHONE, bank=IBAN):
    me = users.get_user(db, actor=actor, user_id=actor.id)
    return users.update_profile(db, actor=actor, user_id=actor.id, expected_version=me.version, name=me.name,
                                phone=phone, bank_account=bank)


def test_raw_select_shows_no_plaintext(db):
    investor = make_user(db, "investor", phone=PHONE)
    save_profile(db, investor)
    phone, bank = raw(db, investor.id)
    assert phone and bank
    for stored, plain in ((phone, PHONE), (bank, IBAN)):
        assert plain not in stored
        assert "7700900123" not in stored and "20201555555555" not in stored
        assert stored.startswith("gAAAAA")  # a Fernet token
    # two encryptions of the same number differ (random IV): equal phones cannot be spotted in the table
    other = make_user(db, "investor", phone=PHONE)
    assert raw(db, other.id)[0] != phone


def test_round_trip_through_the_model(db):
    investor = make_user(db, "investor")
    view = save_profile(db, investor)
    assert (view.phone, users.get_user(db, actor=investor, user_id=investor.id).phone) == (PHONE, PHONE)
    with db.read() as session:
        user = session.get(User, investor.id)
        assert (user.phone, user.bank_account) == (PHONE, IBAN)
    # clearing a field stores NULL, not an encrypted empty string
    save_profile(db, investor, phone=None, bank=None)
    assert raw(db, investor.id) == (None, None)


def test_key_rotation_with_multifernet(db, monkeypatch):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    use_keys(monkeypatch, old)
    investor = make_user(db, "investor")
    save_profile(db, investor)
    token_old = raw(db, investor.id)[0]
    assert Fernet(old).decrypt(token_old.encode()).decode() == PHONE

    # the new key goes first: old rows still read, new writes use the new key
    use_keys(monkeypatch, new, old)
    assert users.get_user(db, actor=investor, user_id=investor.id).phone == PHONE
    save_profile(db, investor, phone="+14155550100", bank="DE89370400440532013000")
    token_new = raw(db, investor.id)[0]
    assert Fernet(new).decrypt(raw(db, investor.id)[1].encode()).decode() == "DE89370400440532013000"
    assert Fernet(new).decrypt(token_new.encode()).decode() == "+14155550100"
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(token_new.encode())

    # once every row is rewritten, the old key can go
    use_keys(monkeypatch, new)
    me = users.get_user(db, actor=investor, user_id=investor.id)
    assert me.phone == "+14155550100"
    # a token under the old key can be re-encrypted under the new one without reading it in clear
    from core.crypto import _cipher

    assert Fernet(new).decrypt(_cipher((new, old)).rotate(token_old.encode())).decode() == PHONE
    # ...but a row still under the old key no longer reads: keys must be retired only after re-encryption
    use_keys(monkeypatch, old)
    other = make_user(db, "investor", phone=PHONE)
    use_keys(monkeypatch, new)
    with pytest.raises(InvalidToken):
        users.get_user(db, actor=other, user_id=other.id)


def test_default_key_comes_from_the_install_secret(db, monkeypatch):
    monkeypatch.delenv("POOLDESK_ENCRYPTION_KEYS", raising=False)
    reset_settings_cache()
    investor = make_user(db, "investor", phone=PHONE)
    assert users.get_user(db, actor=investor, user_id=investor.id).phone == PHONE
    # another installation (another secret) cannot read it
    monkeypatch.setenv("POOLDESK_SECRET_KEY", "a-different-install-secret-of-enough-length")
    reset_settings_cache()
    with pytest.raises(InvalidToken):
        users.get_user(db, actor=investor, user_id=investor.id)


def test_rotate_keys_command_lets_the_old_key_go(db, monkeypatch):
    from click.testing import CliRunner

    from app.cli import cli

    old, new = Fernet.generate_key(), Fernet.generate_key()
    use_keys(monkeypatch, old)
    investor = make_user(db, "investor")
    save_profile(db, investor)
    bystander = make_user(db, "investor")  # nothing to re-encrypt for this one
    use_keys(monkeypatch, new, old)
    result = CliRunner().invoke(cli, ["rotate-keys"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Re-encrypted the personal fields of 1 user(s)" in result.output
    phone_token, bank_token = raw(db, investor.id)
    assert Fernet(new).decrypt(phone_token.encode()).decode() == PHONE
    assert Fernet(new).decrypt(bank_token.encode()).decode() == IBAN
    use_keys(monkeypatch, new)  # the old key is gone, everything still reads
    me = users.get_user(db, actor=investor, user_id=investor.id)
    assert (me.phone, users.get_user(db, actor=bystander, user_id=bystander.id).phone) == (PHONE, None)
    with pytest.raises(users.PermissionDenied):
        users.rotate_encryption(db, actor=investor)
