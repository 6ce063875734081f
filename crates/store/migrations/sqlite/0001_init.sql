-- poolgate schema v1 (SQLite). Timestamps are Unix milliseconds; lists and documents are JSON
-- text; booleans are 0/1.

CREATE TABLE accounts (
    id                          TEXT PRIMARY KEY,
    provider                    TEXT NOT NULL,
    name                        TEXT NOT NULL,
    group_name                  TEXT NOT NULL,
    tags                        TEXT NOT NULL,
    priority                    INTEGER NOT NULL,
    note                        TEXT NOT NULL,
    enabled                     INTEGER NOT NULL,
    max_inflight                INTEGER NOT NULL,
    proxy_url                   TEXT,
    model_filter                TEXT NOT NULL,
    base_url                    TEXT,
    azure_deployment            TEXT,
    azure_api_version           TEXT,
    -- CodexIdentity::key(): one account per (subject, chatgpt_account_id); NULL otherwise.
    identity_key                TEXT UNIQUE,
    identity_subject            TEXT,
    identity_chatgpt_account_id TEXT,
    identity_chatgpt_user_id    TEXT,
    identity_email              TEXT,
    identity_plan_type          TEXT,
    managed_by                  TEXT NOT NULL,
    managed_ref                 TEXT,
    status                      TEXT NOT NULL,
    status_reason               TEXT,
    created_at_ms               INTEGER NOT NULL,
    updated_at_ms               INTEGER NOT NULL
) STRICT;
CREATE INDEX accounts_group_idx ON accounts (group_name, id);
CREATE INDEX accounts_provider_idx ON accounts (provider, id);
CREATE INDEX accounts_status_idx ON accounts (status, id);

-- AES-256-GCM sealed core::Credentials JSON, bound to the account id.
CREATE TABLE credentials (
    account_id    TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    sealed        BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE usage (
    account_id    TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    snapshot      TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE platform_keys (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    prefix           TEXT NOT NULL,
    hash             TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL,
    expires_at_ms    INTEGER,
    allowed_models   TEXT NOT NULL,
    model_override   TEXT,
    reasoning_effort TEXT,
    account_groups   TEXT NOT NULL,
    managed_by       TEXT NOT NULL,
    managed_ref      TEXT,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
) STRICT;

CREATE TABLE admin_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE request_logs (
    id                  TEXT PRIMARY KEY,
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
    attempts            TEXT NOT NULL
) STRICT;
CREATE INDEX request_logs_ts_idx ON request_logs (ts_ms, id);
CREATE INDEX request_logs_key_idx ON request_logs (key_id, ts_ms);
CREATE INDEX request_logs_account_idx ON request_logs (account_id, ts_ms);
CREATE INDEX request_logs_model_idx ON request_logs (model, ts_ms);
-- Partial: people filter for failures; indexing every 2xx would tax ingest for nothing.
CREATE INDEX request_logs_status_idx ON request_logs (status, ts_ms) WHERE status >= 400;
CREATE INDEX request_logs_error_idx ON request_logs (error_class, ts_ms) WHERE error_class IS NOT NULL;

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    detail      TEXT NOT NULL
) STRICT;
CREATE INDEX audit_events_ts_idx ON audit_events (ts_ms, id);

-- AUTOINCREMENT: a version is never handed out twice, even after old rows are deleted.
CREATE TABLE changes (
    version     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    deleted     INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL
) STRICT;

CREATE TABLE routing_policy (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    policy        TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
