-- poolgate schema v2 (SQLite): shared account state folded from gateway observations, the
-- gateways that follow the snapshot stream, and an index for change-log retention.

-- Cooldown every gateway honours (from 429s and exhausted quota), and whether the leader's
-- refresh job should renew the account's OAuth tokens (set after an upstream 401).
ALTER TABLE accounts ADD COLUMN cooldown_until_ms INTEGER;
ALTER TABLE accounts ADD COLUMN cooldown_reason TEXT;
ALTER TABLE accounts ADD COLUMN needs_refresh INTEGER NOT NULL DEFAULT 0;

CREATE TABLE gateways (
    node_id           TEXT PRIMARY KEY,
    -- The control-plane replica the gateway last talked to.
    control_node      TEXT NOT NULL,
    applied_version   INTEGER NOT NULL,
    -- 0 = not yet (a gateway may report before it watches, or the other way round).
    connected_at_ms   INTEGER NOT NULL,
    last_report_at_ms INTEGER NOT NULL,
    last_seen_at_ms   INTEGER NOT NULL
) STRICT;
CREATE INDEX gateways_seen_idx ON gateways (last_seen_at_ms);

CREATE INDEX changes_ts_idx ON changes (ts_ms);
