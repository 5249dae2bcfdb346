"""PostgreSQL functions for the two hottest writes: appending to the audit chain and posting a settled flow.

Each is one round trip instead of a dozen, so the rows they lock (the audit chain head,
the pool) are held for the function's run and the commit only. They mirror, rule for
rule, the Python paths in core/services/audit.py and core/services/ledger.py, which
SQLite uses; every ledger test runs on both databases.

Revision ID: 0002_hot_paths
Revises: 0001
"""
from alembic import op

revision = "0002_hot_paths"
down_revision = "0001"
branch_labels = None
depends_on = None

AUDIT = r"""
CREATE OR REPLACE FUNCTION pooldesk_audit_field(value text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT length(coalesce(value, '')) || ':' || coalesce(value, '') || '|' $$;

CREATE OR REPLACE FUNCTION pooldesk_audit_append(p_at timestamptz, p_actor integer, p_action text, p_entity text,
                                                 p_entity_id text, p_before text, p_after text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_prev text;
    v_hash text;
    v_id integer;
BEGIN
    SELECT head_hash INTO v_prev FROM audit_chain WHERE id = 1 FOR UPDATE;
    v_hash := encode(sha256(convert_to(
        pooldesk_audit_field(v_prev)
        || pooldesk_audit_field(((extract(epoch FROM p_at) * 1000000)::bigint)::text)
        || pooldesk_audit_field(p_actor::text) || pooldesk_audit_field(p_action) || pooldesk_audit_field(p_entity)
        || pooldesk_audit_field(p_entity_id) || pooldesk_audit_field(p_before) || pooldesk_audit_field(p_after),
        'UTF8')), 'hex');
    INSERT INTO audit_log (at, actor_id, action, entity, entity_id, before, after, prev_hash, hash)
    VALUES (p_at, p_actor, p_action, p_entity, p_entity_id, p_before::json, p_after::json, v_prev, v_hash)
    RETURNING id INTO v_id;
    UPDATE audit_chain SET head_hash = v_hash, last_id = v_id WHERE id = 1;
    RETURN v_id;
END $$;
"""

# Amounts are BIGINT scaled by 10^4, units and prices by 10^6 (core/db/types.py). A refusal is raised
# (SQLSTATE P0001, the reason as the message), so a call made in autocommit mode writes nothing; the
# caller turns the reason into the same words the Python path uses.
POST_FLOW = r"""
CREATE OR REPLACE FUNCTION pooldesk_post_flow(
    p_pool_id integer, p_investor_id integer, p_kind text, p_mode text, p_amount bigint, p_units bigint,
    p_minor integer, p_effective date, p_actor_id integer, p_note text, p_key text, p_payment text,
    p_at timestamptz, p_operation text, p_request_hash text)
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
    v_prior idempotency_keys%ROWTYPE;
BEGIN
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
        v_event := 'contribution_settled';
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
        v_event := 'withdrawal_paid';
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

    INSERT INTO outbox (queue, job, payload, created_at, attempts)
    VALUES ('notifications', 'jobs.notify.dispatch_event',
            json_build_object('event', v_event, 'pool_id', p_pool_id, 'transaction_id', v_tx), p_at, 0);

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

    PERFORM pooldesk_audit_append(p_at, p_actor_id, 'transaction.create', 'transaction', v_tx::text, NULL,
        json_build_object('kind', p_kind, 'status', 'pending', 'mode', p_mode, 'pool_id', p_pool_id,
                          'investor_id', p_investor_id, 'payment', p_payment,
                          'amount', CASE WHEN p_amount IS NULL THEN NULL ELSE round(p_amount::numeric / 10000, p_minor)::text END,
                          'units', CASE WHEN p_units IS NULL THEN NULL ELSE (p_units::numeric / 1000000)::numeric(24, 6)::text END)::text);
    PERFORM pooldesk_audit_append(p_at, p_actor_id, 'transaction.settle', 'transaction', v_tx::text,
        json_build_object('status', 'pending')::text,
        json_build_object('status', 'settled', 'units', (v_units::numeric / 1000000)::numeric(24, 6)::text,
                          'amount', round(v_amount::numeric / 10000, p_minor)::text,
                          'price', (v_price::numeric / 1000000)::numeric(24, 6)::text)::text);

    RETURN QUERY SELECT v_tx, v_units, v_amount, v_price, NULL::text, v_available;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(AUDIT)
    op.execute(POST_FLOW)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS pooldesk_post_flow(integer, integer, text, text, bigint, bigint, integer, "
               "date, integer, text, text, text, timestamptz, text, text)")
    op.execute("DROP FUNCTION IF EXISTS pooldesk_audit_append(timestamptz, integer, text, text, text, text, text)")
    op.execute("DROP FUNCTION IF EXISTS pooldesk_audit_field(text)")
