-- poolgate schema v2 (PostgreSQL): shared account state folded from gateway observations, the
-- gateways that follow the snapshot stream, and an index for change-log retention.

-- Cooldown every gateway honours (from 429s and exhausted quota), and whether the leader's
-- refresh job should renew the account's OAuth tokens (set after an upstream 401).
ALTER TABLE accounts ADD COLUMN cooldown_until_ms BIGINT;
ALTER TABLE accounts ADD COLUMN cooldown_reason TEXT;
ALTER TABLE accounts ADD COLUMN needs_refresh BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE gateways (
    node_id           TEXT COLLATE "C" PRIMARY KEY,
    -- The control-plane replica the gateway last talked to.
    control_node      TEXT NOT NULL,
    applied_version   BIGINT NOT NULL,
    -- 0 = not yet (a gateway may report before it watches, or the other way round).
    connected_at_ms   BIGINT NOT NULL,
    last_report_at_ms BIGINT NOT NULL,
    last_seen_at_ms   BIGINT NOT NULL
);
CREATE INDEX gateways_seen_idx ON gateways (last_seen_at_ms);

CREATE INDEX changes_ts_idx ON changes (ts_ms);
