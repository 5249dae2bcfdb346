"""Profile edits change only what is passed."""
from __future__ import annotations


def test_profile_update_keeps_fields_that_are_not_passed(db):
    from core.services import users
    from tests.factories import make_user

    investor = make_user(db, "investor", phone="+447700900123")
    view = users.get_user(db, actor=investor, user_id=investor.id)
    with db.transaction() as session:  # a bank account set elsewhere
        from core.db.models import User
        session.get(User, investor.id).bank_account = "GB33BUKB20201555555555"
    view = users.update_profile(db, actor=investor, user_id=investor.id, expected_version=view.version,
                                name="New Name", phone="+447700900999")
    with db.read() as session:
        from core.db.models import User
        user = session.get(User, investor.id)
        assert (user.name, user.phone, user.bank_account) == ("New Name", "+447700900999", "GB33BUKB20201555555555")
    users.update_profile(db, actor=investor, user_id=investor.id, expected_version=view.version, name="New Name",
                         phone=None)
    with db.read() as session:
        user = session.get(User, investor.id)
        assert (user.phone, user.bank_account) == (None, "GB33BUKB20201555555555")
