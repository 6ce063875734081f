-- poolgate schema v5 (SQLite): a request log is identified by (ts_ms, id) in the one unique
-- index that also orders and pages the logs, instead of a primary key on `id` beside it. A
-- request id is unique by itself (its first 12 hex digits are its timestamp), and a batch a
-- gateway sends again carries the same pair, so the index still drops duplicates; ingest
-- maintains one B-tree less per row. SQLite cannot drop a primary key: the table is rebuilt.

CREATE TABLE request_logs_v5 (
    id                  TEXT NOT NULL,
    ts_ms               INTEGER NOT NULL,
    key_id              TEXT,
    account_id          TEXT,
    method              TEXT NOT NULL,
    path                TEXT NOT NULL,
    model               TEXT,
    protocol            TEXT NOT NULL,
    status              INTEGER NOT NULL,
    error_class         TEXT,
    input_tokens        INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    ttfb_ms             INTEGER,
    duration_ms         INTEGER NOT NULL,
    node                TEXT NOT NULL,
    attempts            TEXT NOT NULL,
    translation         TEXT NOT NULL DEFAULT 'none',
    upstream_model      TEXT
) STRICT;
INSERT INTO request_logs_v5 (id, ts_ms, key_id, account_id, method, path, model, protocol,
    status, error_class, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
    ttfb_ms, duration_ms, node, attempts, translation, upstream_model)
SELECT id, ts_ms, key_id, account_id, method, path, model, protocol,
    status, error_class, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
    ttfb_ms, duration_ms, node, attempts, translation, upstream_model
FROM request_logs ORDER BY ts_ms, id;
DROP TABLE request_logs;
ALTER TABLE request_logs_v5 RENAME TO request_logs;
CREATE UNIQUE INDEX request_logs_ts_idx ON request_logs (ts_ms, id);
CREATE INDEX request_logs_key_idx ON request_logs (key_id, ts_ms);
CREATE INDEX request_logs_account_idx ON request_logs (account_id, ts_ms);
CREATE INDEX request_logs_model_idx ON request_logs (model, ts_ms);
CREATE INDEX request_logs_status_idx ON request_logs (status, ts_ms) WHERE status >= 400;
CREATE INDEX request_logs_error_idx ON request_logs (error_class, ts_ms) WHERE error_class IS NOT NULL;
