"""Personal fields (phones, bank accounts, delivery addresses, webhook secrets) are encrypted at rest, with
rotatable keys.

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


def _encrypted_snapshot(db) -> dict[str, list[tuple]]:
    """Every encrypted column of every table, as stored (ciphertext)."""
    from core.services.keys import encrypted_columns

    with db.read() as session:
        return {t.name: [tuple(r) for r in session.execute(text(
            f'SELECT {", ".join(c.name for c in cols)} FROM "{t.name}" ORDER BY 1'))]
            for t, cols in encrypted_columns().items()}


def _read_everything(db) -> dict[str, list[tuple]]:
    """Every encrypted column of every table, through the column type (decrypted): fails if one cannot be read."""
    from sqlalchemy import select

    from core.services.keys import encrypted_columns

    with db.read() as session:
        return {t.name: [tuple(r) for r in session.execute(select(*cols).order_by(*t.primary_key.columns))]
                for t, cols in encrypted_columns().items()}


def _rotate(*args):
    from click.testing import CliRunner

    from app.cli import cli

    return CliRunner().invoke(cli, ["rotate-keys", *args])


def _world(db, monkeypatch, old, new):
    """Users, email/SMS deliveries and a webhook endpoint written under ``old``; one more user under ``new``."""
    from core.db.models import Delivery
    from core.services import operations
    from tests.factories import system

    use_keys(monkeypatch, old)
    investor = make_user(db, "investor")
    save_profile(db, investor)
    bystander = make_user(db, "investor")  # nothing encrypted for this one
    with db.transaction() as session:
        session.add_all([Delivery(key="d1", channel="email", event="invitation", to_address="ann@example.com"),
                         Delivery(key="d2", channel="sms", event="large_flow", to_address=PHONE)])
    operations.create_endpoint(db, actor=system(db), url="https://hooks.example.com/pooldesk",
                               events=["contribution_settled"], secret="whsec_old-key-secret-123")
    use_keys(monkeypatch, new, old)
    already = make_user(db, "investor", phone="+14155550100")  # written under the new key: nothing to do
    return investor, bystander, already


def test_rotate_keys_re_encrypts_every_encrypted_column_and_the_old_key_can_go(db, monkeypatch):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    investor, bystander, already = _world(db, monkeypatch, old, new)
    clear = _read_everything(db)
    result = _rotate()
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "users: 1 of 2 row(s) re-encrypted",
        "deliveries: 2 of 2 row(s) re-encrypted",
        "webhook_endpoints: 1 of 1 row(s) re-encrypted",
        "Re-encrypted 4 row(s) under the first key of POOLDESK_ENCRYPTION_KEYS; once no other process uses the old "
        "keys, remove them.",
    ]
    for rows in _encrypted_snapshot(db).values():  # every stored value is now under the new key
        for token in (t for row in rows for t in row if t is not None):
            assert Fernet(new).decrypt(token.encode())
    use_keys(monkeypatch, new)  # the old key is gone: users, deliveries, webhook secrets all still read
    assert _read_everything(db) == clear
    assert users.get_user(db, actor=investor, user_id=investor.id).phone == PHONE
    assert users.get_user(db, actor=bystander, user_id=bystander.id).phone is None
    # a second run finds nothing left to do
    again = _rotate()
    assert again.exit_code == 0 and "Re-encrypted 0 row(s)" in again.output
    from core.services.keys import rotate_encryption

    with pytest.raises(users.PermissionDenied):
        rotate_encryption(db, actor=investor)


def test_rotate_keys_with_a_bad_key_says_so_in_one_line_and_changes_nothing(db, monkeypatch):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    _world(db, monkeypatch, old, new)
    before = _encrypted_snapshot(db)
    monkeypatch.setenv("POOLDESK_ENCRYPTION_KEYS", f"{new.decode()},{old.decode()[:-2]}")
    reset_settings_cache()
    result = _rotate()
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: POOLDESK_ENCRYPTION_KEYS: key 2 of 2 is not a valid Fernet key (32 bytes in url-safe base64, "
        "44 characters; make one with `pooldesk new-key`)."]
    use_keys(monkeypatch, new, old)
    assert _encrypted_snapshot(db) == before


def test_rotate_keys_with_a_value_no_key_reads_names_it_and_changes_nothing(db, monkeypatch):
    from core.db.models import Delivery

    old, new, lost = Fernet.generate_key(), Fernet.generate_key(), Fernet.generate_key()
    _world(db, monkeypatch, old, new)
    use_keys(monkeypatch, lost)
    with db.transaction() as session:
        session.add(Delivery(key="d3", channel="email", event="invitation", to_address="lost@example.com"))
    use_keys(monkeypatch, new, old)
    before = _encrypted_snapshot(db)
    result = _rotate()
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: deliveries.to_address of row 3 cannot be decrypted with any key in POOLDESK_ENCRYPTION_KEYS: add the "
        "key it was written with (after the first), then run rotate-keys again. Nothing was changed."]
    assert _encrypted_snapshot(db) == before  # the users' rows, checked first, were not rewritten either


def test_new_key_from_secret_gives_the_key_an_install_without_keys_used(db, monkeypatch):
    from click.testing import CliRunner

    from app.cli import cli

    monkeypatch.delenv("POOLDESK_ENCRYPTION_KEYS", raising=False)
    reset_settings_cache()
    investor = make_user(db, "investor", phone=PHONE)  # under the key derived from the install secret
    derived = CliRunner().invoke(cli, ["new-key", "--from-secret"]).output.strip()
    new = Fernet.generate_key()
    use_keys(monkeypatch, new, derived.encode())
    assert "users: 1 of 1 row(s) re-encrypted" in _rotate().output
    use_keys(monkeypatch, new)
    assert users.get_user(db, actor=investor, user_id=investor.id).phone == PHONE
