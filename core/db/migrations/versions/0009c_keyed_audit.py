"""A keyed audit chain, leg digests in posting rows, the role check in the one-trip flow, and a
least-privilege database role for the app.

* The chain's hash becomes HMAC-SHA256 with a key held outside the database
  (``Settings.audit_chain_key``). The PostgreSQL functions take the key's two HMAC pads as a
  parameter with every call and hash with the built-in ``sha256`` (no extension needed), so the
  key is never stored in a table. Existing rows are re-hashed here, with the key, from the first
  row for as long as the old (unkeyed) chain is intact; from a row where it is already broken on,
  rows are left as they are, so ``pooldesk audit verify`` still names that row.
* ``pooldesk_post_flow`` writes the digest of the two legs it posts into its
  ``transaction.settle`` row (``legs``; see ``audit.legs_digest``) and refuses an actor who is not,
  in ``users``, an active admin (or the system user), or an active manager assigned to the pool
  (``not_permitted``, the role and status as the detail); ``pooldesk_post_checked_flow`` answers
  ``check`` for such an actor instead of trusting the caller's word that it is an admin.
* ``pooldesk_app``: a NOLOGIN role that may read and write every table but only read and append to
  ``audit_log`` and ``journal_entries`` (and only read ``alembic_version``). ``pooldesk_grant_app_role()``
  grants it again after a later migration or when the role could not be created here (the migration
  user lacks CREATEROLE): an administrator creates the role, then calls the function.

The functions of migrations 0002, 0006 and 0007 with their old signatures are dropped: left in
place they would still append unkeyed rows.

Revision ID: 0009c_keyed_audit
Revises: 0008_journal_indexes
"""
import hashlib
import hmac

import sqlalchemy as sa
from alembic import op

revision = "0009c_keyed_audit"
down_revision = "0009b_import_files"
branch_labels = None
depends_on = None

GENESIS = "0" * 64

OLD_SIGNATURES = (
    "pooldesk_post_checked_flow(integer, integer, text, text, bigint, bigint, text, integer, date, date, integer, "
    "boolean, text, text, text, timestamptz, text, text)",
    "pooldesk_post_flow(integer, integer, text, text, bigint, bigint, integer, date, integer, text, text, text, "
    "timestamptz, text, text)",
    "pooldesk_audit_append(timestamptz, integer, text, text, text, text, text)",
)
NEW_SIGNATURES = (
    "pooldesk_post_checked_flow(integer, integer, text, text, bigint, bigint, text, integer, date, date, integer, "
    "text, text, text, timestamptz, text, text, bytea)",
    "pooldesk_post_flow(integer, integer, text, text, bigint, bigint, integer, date, integer, text, text, text, "
    "timestamptz, text, text, bytea)",
    "pooldesk_audit_append(bytea, timestamptz, integer, text, text, text, text, text)",
    "pooldesk_hmac(bytea, text)",
    "pooldesk_grant_app_role()",
)

# HMAC-SHA256 (RFC 2104) from the key's pads: the first 64 bytes are key XOR 0x36, the next 64 key XOR 0x5c.
HMAC = r"""
CREATE OR REPLACE FUNCTION pooldesk_hmac(p_pads bytea, p_message text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT encode(sha256(substring(p_pads FROM 65 FOR 64)
                         || sha256(substring(p_pads FROM 1 FOR 64) || convert_to(p_message, 'UTF8'))), 'hex')
$$;
"""

AUDIT = r"""
CREATE OR REPLACE FUNCTION pooldesk_audit_append(p_pads bytea, p_at timestamptz, p_actor integer, p_action text,
                                                 p_entity text, p_entity_id text, p_before text, p_after text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_prev text;
    v_hash text;
    v_id integer;
BEGIN
    IF p_pads IS NULL OR length(p_pads) <> 128 THEN
        RAISE EXCEPTION 'the audit key pads must be 128 bytes';
    END IF;
    SELECT head_hash INTO v_prev FROM audit_chain WHERE id = 1 FOR UPDATE;
    v_hash := pooldesk_hmac(p_pads,
        pooldesk_audit_field(v_prev)
        || pooldesk_audit_field(((extract(epoch FROM p_at) * 1000000)::bigint)::text)
        || pooldesk_audit_field(p_actor::text) || pooldesk_audit_field(p_action) || pooldesk_audit_field(p_entity)
        || pooldesk_audit_field(p_entity_id) || pooldesk_audit_field(p_before) || pooldesk_audit_field(p_after));
    INSERT INTO audit_log (at, actor_id, action, entity, entity_id, before, after, prev_hash, hash)
    VALUES (p_at, p_actor, p_action, p_entity, p_entity_id, p_before::json, p_after::json, v_prev, v_hash)
    RETURNING id INTO v_id;
    UPDATE audit_chain SET head_hash = v_hash, last_id = v_id WHERE id = 1;
    RETURN v_id;
END $$;
"""

# Migration 0006's function, with: the actor's role checked in the database, the legs' digest in the
# settle row, and keyed hashes.
POST_FLOW = r"""
CREATE OR REPLACE FUNCTION pooldesk_post_flow(
    p_pool_id integer, p_investor_id integer, p_kind text, p_mode text, p_amount bigint, p_units bigint,
    p_minor integer, p_effective date, p_actor_id integer, p_note text, p_key text, p_payment text,
    p_at timestamptz, p_operation text, p_request_hash text, p_audit_pads bytea)
RETURNS TABLE (out_tx integer, out_units bigint, out_amount bigint, out_price bigint, out_error text,
               out_available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_pool pools%ROWTYPE;
    v_held bigint;
    v_reserved bigint;
    v_available bigint;
    v_price bigint;
    v_units bigint;
    v_amount bigint;
    v_n numeric;
    v_q numeric;
    v_r numeric;
    v_tx integer;
    v_seq integer;
    v_sign integer;
    v_event text;
    v_requested text;
    v_pending constant text := '{"status" : "pending"}';
    v_settled text;
    v_legs text;
    v_fixed text;
    v_create text;
    v_settle text;
    v_prev text;
    v_hash1 text;
    v_hash2 text;
    v_actor_role text;
    v_actor_status text;
    v_assigned integer;
    v_prior idempotency_keys%ROWTYPE;
BEGIN
    IF p_audit_pads IS NULL OR length(p_audit_pads) <> 128 THEN
        RAISE EXCEPTION 'the audit key pads must be 128 bytes';
    END IF;
    -- Idempotency first: a twin request with the same key waits here, not on the pool.
    v_tx := nextval(pg_get_serial_sequence('transactions', 'id'));
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (key, actor_id, operation, request_hash, result, created_at)
        VALUES (p_key, p_actor_id, p_operation, p_request_hash, json_build_object('transaction_id', v_tx), p_at)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            SELECT * INTO v_prior FROM idempotency_keys WHERE key = p_key;
            -- A key belongs to whoever first used it (a replay skips the access checks).
            IF v_prior.operation <> p_operation OR v_prior.request_hash <> p_request_hash
               OR v_prior.actor_id <> p_actor_id THEN
                RETURN QUERY SELECT NULL::integer, NULL::bigint, NULL::bigint, NULL::bigint,
                                    'idempotency_mismatch'::text, NULL::bigint;
            ELSE
                RETURN QUERY SELECT (v_prior.result::jsonb ->> 'transaction_id')::integer, NULL::bigint, NULL::bigint,
                                    NULL::bigint, 'replay'::text, NULL::bigint;
            END IF;
            RETURN;
        END IF;
    END IF;
    -- Who may post, as core.services.context.manages_pool says, from the users table as it is now (not
    -- from what the caller believes): an active admin (or the system user the command and the workers
    -- act as), or an active manager assigned to the pool.
    SELECT u.role, u.status, m.user_id INTO v_actor_role, v_actor_status, v_assigned
      FROM users u LEFT JOIN pool_managers m ON m.pool_id = p_pool_id AND m.user_id = u.id
     WHERE u.id = p_actor_id;
    IF v_actor_status IS NULL OR v_actor_status NOT IN ('active', 'system')
       OR NOT (v_actor_role = 'admin' OR (v_actor_role = 'manager' AND v_assigned IS NOT NULL)) THEN
        RAISE EXCEPTION 'not_permitted' USING ERRCODE = 'P0001',
              DETAIL = coalesce(v_actor_role, '-') || ' ' || coalesce(v_actor_status, '-');
    END IF;
    -- What does not depend on the price is done before the pool row is locked: the outbox message
    -- (no other posting touches it) and the text of the first audit row.
    v_event := CASE WHEN p_kind = 'contribution' THEN 'contribution_settled' ELSE 'withdrawal_paid' END;
    INSERT INTO outbox (queue, job, payload, created_at, attempts)
    VALUES ('notifications', 'jobs.notify.dispatch_event',
            json_build_object('event', v_event, 'pool_id', p_pool_id, 'transaction_id', v_tx), p_at, 0);

    v_requested := json_build_object(
        'kind', p_kind, 'status', 'pending', 'mode', p_mode, 'pool_id', p_pool_id, 'investor_id', p_investor_id,
        'payment', p_payment,
        'amount', CASE WHEN p_amount IS NULL THEN NULL ELSE round(p_amount::numeric / 10000, p_minor)::text END,
        'units', CASE WHEN p_units IS NULL THEN NULL ELSE (p_units::numeric / 1000000)::numeric(24, 6)::text END
    )::text;
    -- The audit rows' fields but the chain links, as pooldesk_audit_append hashes them.
    v_fixed := pooldesk_audit_field(((extract(epoch FROM p_at) * 1000000)::bigint)::text)
               || pooldesk_audit_field(p_actor_id::text);
    v_create := pooldesk_audit_field('transaction.create') || pooldesk_audit_field('transaction')
                || pooldesk_audit_field(v_tx::text) || pooldesk_audit_field(NULL) || pooldesk_audit_field(v_requested);
    v_settle := pooldesk_audit_field('transaction.settle') || pooldesk_audit_field('transaction')
                || pooldesk_audit_field(v_tx::text) || pooldesk_audit_field(v_pending);
    -- The pool row first, as every other write to a pool does (so no deadlock), held to the commit:
    -- journal ids follow commit order within a pool, and a valuation sees whole postings only.
    SELECT * INTO v_pool FROM pools WHERE id = p_pool_id FOR UPDATE;
    IF v_pool.status <> 'open' THEN
        RAISE EXCEPTION 'pool_not_open' USING ERRCODE = 'P0001';
    END IF;
    -- Rule 1: the latest NAV per unit, or the initial price when nobody holds units.
    v_price := CASE WHEN v_pool.units_outstanding > 0 THEN v_pool.nav_per_unit ELSE v_pool.initial_unit_price END;
    IF p_kind = 'contribution' THEN
        -- Rule 3: units = A / p at 6 places, half-even.
        v_n := p_amount::numeric * 100000000;
        v_q := div(v_n, v_price);
        v_r := v_n - v_q * v_price;
        IF 2 * v_r > v_price OR (2 * v_r = v_price AND mod(v_q, 2) = 1) THEN
            v_q := v_q + 1;
        END IF;
        v_units := v_q;
        v_amount := p_amount;
        IF v_units <= 0 THEN
            RAISE EXCEPTION 'too_small' USING ERRCODE = 'P0001';
        END IF;
        v_sign := 1;
    ELSE
        -- The holding is locked, so no other withdrawal of this investor can use the same units.
        SELECT units INTO v_held FROM positions WHERE pool_id = p_pool_id AND investor_id = p_investor_id FOR UPDATE;
        SELECT coalesce(sum(units), 0) INTO v_reserved FROM transactions
         WHERE pool_id = p_pool_id AND investor_id = p_investor_id AND kind = 'withdrawal'
           AND status = 'pending' AND price IS NOT NULL;
        v_available := coalesce(v_held, 0) - v_reserved;
        IF v_available <= 0 THEN
            RAISE EXCEPTION 'nothing_held' USING ERRCODE = 'P0001';
        END IF;
        IF p_mode = 'amount' THEN
            -- Rule 4: units redeemed = A / p rounded up.
            v_n := p_amount::numeric * 100000000;
            v_q := div(v_n, v_price);
            IF v_n - v_q * v_price > 0 THEN
                v_q := v_q + 1;
            END IF;
            v_units := v_q;
            v_amount := p_amount;
        ELSE
            v_units := CASE WHEN p_mode = 'units' THEN p_units ELSE v_available END;
            -- Rule 4: amount = u * p rounded down to the currency's minor unit.
            v_amount := div(v_units::numeric * v_price, (10::numeric ^ (12 - p_minor))::numeric)
                        * (10::numeric ^ (4 - p_minor))::numeric;
        END IF;
        IF v_units <= 0 OR v_units > v_available THEN
            RAISE EXCEPTION 'insufficient' USING ERRCODE = 'P0001', DETAIL = v_units || ' ' || v_available;
        END IF;
        IF v_amount <= 0 THEN
            RAISE EXCEPTION 'worthless' USING ERRCODE = 'P0001';
        END IF;
        v_sign := -1;
    END IF;

    INSERT INTO transactions (id, pool_id, investor_id, kind, status, amount, units, price, withdrawal_mode,
                              effective_date, source, payment_received_at, note, idempotency_key, created_by,
                              created_at, settled_at, version)
    VALUES (v_tx, p_pool_id, p_investor_id, p_kind, 'settled', v_amount, v_units, v_price,
            CASE WHEN p_kind = 'withdrawal' THEN p_mode END, p_effective, 'manager', p_at, p_note, p_key,
            p_actor_id, p_at, p_at, 1);

    INSERT INTO journal_entries (pool_id, transaction_id, account, investor_id, amount, units, effective_date,
                                 created_at)
    VALUES (p_pool_id, v_tx, 'pool', NULL, v_sign * v_amount, -v_sign * v_units, p_effective, p_at),
           (p_pool_id, v_tx, 'investor', p_investor_id, -v_sign * v_amount, v_sign * v_units, p_effective, p_at);

    UPDATE pools
       SET units_outstanding = units_outstanding + v_sign * v_units,
           total_assets = total_assets + v_sign * v_amount,
           nav_per_unit = CASE WHEN v_sign > 0 AND units_outstanding = 0 THEN v_price ELSE nav_per_unit END,
           last_flow_date = greatest(coalesce(last_flow_date, p_effective), p_effective),
           ledger_version = ledger_version + 1
     WHERE id = p_pool_id;

    UPDATE positions
       SET units = units + v_sign * v_units,
           contributed = contributed + CASE WHEN v_sign > 0 THEN v_amount ELSE 0 END,
           withdrawn = withdrawn + CASE WHEN v_sign < 0 THEN v_amount ELSE 0 END,
           version = version + 1
     WHERE pool_id = p_pool_id AND investor_id = p_investor_id;
    IF NOT FOUND THEN
        -- A first holding: its place in the order of holders breaks distribution ties (rule 5).
        SELECT count(*) + 1 INTO v_seq FROM positions WHERE pool_id = p_pool_id;
        INSERT INTO positions (pool_id, investor_id, units, contributed, withdrawn, distributions,
                               reinvest_distributions, opened_seq, version)
        VALUES (p_pool_id, p_investor_id, v_units, v_amount, 0, 0, false, v_seq, 1);
    END IF;

    -- The legs' digest as audit.legs_digest builds it: one line per leg, sorted ('investor' < 'pool').
    v_legs := encode(sha256(convert_to(
        'investor|' || p_investor_id || '|' || (-v_sign * v_amount) || '|' || (v_sign * v_units) || E'\n'
        || 'pool||' || (v_sign * v_amount) || '|' || (-v_sign * v_units), 'UTF8')), 'hex');
    -- Both audit rows with one hold of the chain head, taken last so it is held the shortest.
    v_settled := json_build_object('status', 'settled', 'units', (v_units::numeric / 1000000)::numeric(24, 6)::text,
                                   'amount', round(v_amount::numeric / 10000, p_minor)::text,
                                   'price', (v_price::numeric / 1000000)::numeric(24, 6)::text,
                                   'legs', v_legs)::text;
    SELECT head_hash INTO v_prev FROM audit_chain WHERE id = 1 FOR UPDATE;
    v_hash1 := pooldesk_hmac(p_audit_pads, pooldesk_audit_field(v_prev) || v_fixed || v_create);
    v_hash2 := pooldesk_hmac(p_audit_pads, pooldesk_audit_field(v_hash1) || v_fixed || v_settle
                                           || pooldesk_audit_field(v_settled));
    INSERT INTO audit_log (at, actor_id, action, entity, entity_id, before, after, prev_hash, hash)
    VALUES (p_at, p_actor_id, 'transaction.create', 'transaction', v_tx::text, NULL, v_requested::json,
            v_prev, v_hash1),
           (p_at, p_actor_id, 'transaction.settle', 'transaction', v_tx::text, v_pending::json, v_settled::json,
            v_hash1, v_hash2);
    UPDATE audit_chain SET head_hash = v_hash2, last_id = currval('audit_log_id_seq') WHERE id = 1;

    RETURN QUERY SELECT v_tx, v_units, v_amount, v_price, NULL::text, v_available;
END $$;
"""

# Migration 0007's function; the actor's role and status now come from the users table (the caller's
# p_actor_is_admin is gone), so a manager made analyst is sent to the checks that refuse it.
CHECKED_FLOW = r"""
CREATE OR REPLACE FUNCTION pooldesk_post_checked_flow(
    p_pool_id integer, p_investor_id integer, p_kind text, p_mode text, p_amount bigint, p_units bigint,
    p_currency text, p_minor integer, p_effective date, p_today date, p_actor_id integer,
    p_note text, p_key text, p_payment text, p_at timestamptz, p_operation text, p_request_hash text,
    p_audit_pads bytea)
RETURNS TABLE (out_tx integer, out_units bigint, out_amount bigint, out_price bigint, out_error text,
               out_available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_currency text;
    v_policy text;
    v_inception date;
    v_minimum bigint;
    v_role text;
    v_investor_status text;
    v_assigned integer;
    v_actor_role text;
    v_actor_status text;
BEGIN
    SELECT p.status, p.currency, p.pricing_policy, p.inception_date, p.minimum_contribution,
           u.role, u.status, m.user_id, a.role, a.status
      INTO v_status, v_currency, v_policy, v_inception, v_minimum, v_role, v_investor_status, v_assigned,
           v_actor_role, v_actor_status
      FROM pools p
      LEFT JOIN users u ON u.id = p_investor_id
      LEFT JOIN users a ON a.id = p_actor_id
      LEFT JOIN pool_managers m ON m.pool_id = p.id AND m.user_id = p_actor_id
     WHERE p.id = p_pool_id;
    IF NOT FOUND OR v_currency IS DISTINCT FROM p_currency THEN
        RETURN QUERY SELECT NULL::integer, NULL::bigint, NULL::bigint, NULL::bigint, 'unknown'::text, NULL::bigint;
        RETURN;
    END IF;
    IF v_policy <> 'latest' THEN
        RETURN QUERY SELECT NULL::integer, NULL::bigint, NULL::bigint, NULL::bigint, 'general'::text, NULL::bigint;
        RETURN;
    END IF;
    IF v_actor_status IS NULL OR v_actor_status NOT IN ('active', 'system')
       OR NOT (v_actor_role = 'admin' OR (v_actor_role = 'manager' AND v_assigned IS NOT NULL))
       OR (p_amount IS NOT NULL AND p_amount % (10 ^ (4 - p_minor))::bigint <> 0)
       OR v_status <> 'open' OR p_effective < v_inception OR p_effective > p_today
       OR v_role IS DISTINCT FROM 'investor' OR v_investor_status IS DISTINCT FROM 'active'
       OR (p_kind = 'contribution' AND p_amount < v_minimum) THEN
        RETURN QUERY SELECT NULL::integer, NULL::bigint, NULL::bigint, NULL::bigint, 'check'::text, NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM pooldesk_post_flow(
        p_pool_id, p_investor_id, p_kind, p_mode, p_amount, p_units, p_minor, p_effective, p_actor_id, p_note,
        p_key, p_payment, p_at, p_operation, p_request_hash, p_audit_pads);
END $$;
"""

# The app's role. Tables written only by appending (the audit log and the journal) get SELECT and
# INSERT; alembic_version only SELECT; every other table the four verbs. Sequences: nextval and the
# bulk import's setval. Run again by any later migration that adds tables (or by hand).
GRANTS = r"""
CREATE OR REPLACE FUNCTION pooldesk_grant_app_role() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pooldesk_app') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RAISE NOTICE 'role pooldesk_app does not exist and % may not create roles: create it '
                         '(CREATE ROLE pooldesk_app NOLOGIN), then run SELECT pooldesk_grant_app_role()', current_user;
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE pooldesk_app NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created a moment ago by another database's migration (roles belong to the cluster)
        END;
    END IF;
    GRANT USAGE ON SCHEMA public TO pooldesk_app;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pooldesk_app;
    REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, journal_entries FROM pooldesk_app;
    REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM pooldesk_app;
    GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO pooldesk_app;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO pooldesk_app;
END $$;
"""


def _rekey(bind) -> None:
    """Re-hash the existing rows with the key, as far as the unkeyed chain is intact."""
    from core.db.models import AuditChain, AuditEvent
    from core.services import audit

    events = AuditEvent.__table__
    rows = bind.execute(
        sa.select(events.c.id, events.c.at, events.c.actor_id, events.c.action, events.c.entity, events.c.entity_id,
                  sa.cast(events.c.before, sa.Text), sa.cast(events.c.after, sa.Text), events.c.prev_hash,
                  events.c.hash).order_by(events.c.id)).all()
    if not rows:
        return
    from core.config import get_settings

    key = get_settings().audit_chain_key()
    old_prev, new_prev, last_id, changes = GENESIS, GENESIS, 0, []
    intact = True
    for event_id, at, actor_id, action, entity, entity_id, before, after, prev_hash, digest in rows:
        message = audit.chain_message(prev_hash, at, actor_id, action, entity, entity_id, before, after)
        if prev_hash != old_prev:
            intact = False  # a row before it was deleted: left as it is, verify says so
            break
        if hashlib.sha256(message).hexdigest() != digest:
            # Edited before this upgrade: linked to the re-hashed row before it, its own hash kept, so
            # verify names it as edited.
            changes.append({"row": event_id, "prev": new_prev, "digest": digest})
            intact = False
            break
        keyed = hmac.new(key, audit.chain_message(new_prev, at, actor_id, action, entity, entity_id, before, after),
                         hashlib.sha256).hexdigest()
        changes.append({"row": event_id, "prev": new_prev, "digest": keyed})
        old_prev, new_prev, last_id = digest, keyed, event_id
    if changes:
        bind.execute(events.update().where(events.c.id == sa.bindparam("row"))
                     .values(prev_hash=sa.bindparam("prev"), hash=sa.bindparam("digest")), changes)
    chain = AuditChain.__table__
    if intact:
        # Only a head that matched the old chain moves to the new one: a mismatch stays visible.
        bind.execute(chain.update().where(chain.c.id == 1, chain.c.head_hash == old_prev, chain.c.last_id == last_id)
                     .values(head_hash=new_prev))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for signature in OLD_SIGNATURES:
            op.execute(f"DROP FUNCTION IF EXISTS {signature}")
        op.execute(HMAC)
        op.execute(AUDIT)
        op.execute(POST_FLOW)
        op.execute(CHECKED_FLOW)
    _rekey(bind)
    if bind.dialect.name == "postgresql":
        op.execute(GRANTS)
        op.execute("SELECT pooldesk_grant_app_role()")


def downgrade() -> None:
    # The keyed rows stay keyed: the unkeyed functions put back below would append rows that a keyed
    # verify refuses, so a downgrade is for a database that is being thrown away.
    if op.get_bind().dialect.name != "postgresql":
        return
    import importlib.util
    from pathlib import Path

    for signature in NEW_SIGNATURES:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    here = Path(__file__).parent
    for name, parts in (("0002_hot_paths", ("AUDIT",)), ("0006_shorter_hot_path", ("AUDIT", "POST_FLOW")),
                        ("0007_one_trip_flow", ("CHECKED_FLOW",))):
        spec = importlib.util.spec_from_file_location(f"pooldesk_{name}", here / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for part in parts:
            op.execute(getattr(module, part))
