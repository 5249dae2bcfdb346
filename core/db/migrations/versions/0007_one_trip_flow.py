"""A settled flow in one round trip: the checks that read the pool, the investor and the
manager's assignment move into the database, in front of ``pooldesk_post_flow``.

``pooldesk_post_checked_flow`` answers without writing anything:

* ``unknown`` when there is no such pool or its currency is not the one the caller gave;
* ``general`` when the pool prices forward (the caller takes the general path);
* ``check`` when any check would refuse the flow: a manager not assigned to the pool,
  more decimals than the currency has, a pool that is not open, a date before inception
  or after ``p_today``, someone who is not an active investor, less than the minimum
  contribution.

After ``unknown`` or ``check`` the caller reads the pool and runs the Python checks, which
say what is wrong in the words of every other path (and post, should the state have
changed in between).

Otherwise it is ``pooldesk_post_flow`` of migration 0006, with the same locks and results.

Revision ID: 0007_one_trip_flow
Revises: 0006_shorter_hot_path
"""
from alembic import op

revision = "0007_one_trip_flow"
down_revision = "0006_shorter_hot_path"
branch_labels = None
depends_on = None

CHECKED_FLOW = r"""
CREATE OR REPLACE FUNCTION pooldesk_post_checked_flow(
    p_pool_id integer, p_investor_id integer, p_kind text, p_mode text, p_amount bigint, p_units bigint,
    p_currency text, p_minor integer, p_effective date, p_today date, p_actor_id integer, p_actor_is_admin boolean,
    p_note text, p_key text, p_payment text, p_at timestamptz, p_operation text, p_request_hash text)
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
BEGIN
    SELECT p.status, p.currency, p.pricing_policy, p.inception_date, p.minimum_contribution,
           u.role, u.status, m.user_id
      INTO v_status, v_currency, v_policy, v_inception, v_minimum, v_role, v_investor_status, v_assigned
      FROM pools p
      LEFT JOIN users u ON u.id = p_investor_id
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
    IF (NOT p_actor_is_admin AND v_assigned IS NULL)
       OR (p_amount IS NOT NULL AND p_amount % (10 ^ (4 - p_minor))::bigint <> 0)
       OR v_status <> 'open' OR p_effective < v_inception OR p_effective > p_today
       OR v_role IS DISTINCT FROM 'investor' OR v_investor_status IS DISTINCT FROM 'active'
       OR (p_kind = 'contribution' AND p_amount < v_minimum) THEN
        RETURN QUERY SELECT NULL::integer, NULL::bigint, NULL::bigint, NULL::bigint, 'check'::text, NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM pooldesk_post_flow(
        p_pool_id, p_investor_id, p_kind, p_mode, p_amount, p_units, p_minor, p_effective, p_actor_id, p_note,
        p_key, p_payment, p_at, p_operation, p_request_hash);
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(CHECKED_FLOW)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS pooldesk_post_checked_flow(integer, integer, text, text, bigint, bigint, text, "
               "integer, date, date, integer, boolean, text, text, text, timestamptz, text, text)")
