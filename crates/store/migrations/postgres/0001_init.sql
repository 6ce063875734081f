-- poolgate schema v1 (PostgreSQL). Timestamps are Unix milliseconds; lists and documents are
-- JSON text. Ids and the indexed request-log columns compare bytewise (COLLATE "C"): page
-- cursors mean the same whatever the server's locale, and log ingest skips locale-aware
-- comparisons in its index maintenance.

CREATE TABLE accounts (
    id                          TEXT COLLATE "C" PRIMARY KEY,
    provider                    TEXT NOT NULL,
    name                        TEXT NOT NULL,
    group_name                  TEXT NOT NULL,
    tags                        TEXT NOT NULL,
    priority                    BIGINT NOT NULL,
    note                        TEXT NOT NULL,
    enabled                     BOOLEAN NOT NULL,
    max_inflight                BIGINT NOT NULL,
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
    created_at_ms               BIGINT NOT NULL,
    updated_at_ms               BIGINT NOT NULL
);
CREATE INDEX accounts_group_idx ON accounts (group_name, id);
CREATE INDEX accounts_provider_idx ON accounts (provider, id);
CREATE INDEX accounts_status_idx ON accounts (status, id);

-- AES-256-GCM sealed core::Credentials JSON, bound to the account id.
CREATE TABLE credentials (
    account_id    TEXT COLLATE "C" PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    sealed        BYTEA NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE usage (
    account_id    TEXT COLLATE "C" PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    snapshot      TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE platform_keys (
    id               TEXT COLLATE "C" PRIMARY KEY,
    name             TEXT NOT NULL,
    prefix           TEXT NOT NULL,
    hash             TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL,
    expires_at_ms    BIGINT,
    allowed_models   TEXT NOT NULL,
    model_override   TEXT,
    reasoning_effort TEXT,
    account_groups   TEXT NOT NULL,
    managed_by       TEXT NOT NULL,
    managed_ref      TEXT,
    created_at_ms    BIGINT NOT NULL,
    updated_at_ms    BIGINT NOT NULL
);

CREATE TABLE admin_tokens (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE request_logs (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    ts_ms               BIGINT NOT NULL,
    key_id              TEXT COLLATE "C",
    account_id          TEXT COLLATE "C",
    method              TEXT NOT NULL,
    path                TEXT NOT NULL,
    model               TEXT COLLATE "C",
    protocol            TEXT NOT NULL,
    status              BIGINT NOT NULL,
    error_class         TEXT COLLATE "C",
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    ttfb_ms             BIGINT,
    duration_ms         BIGINT NOT NULL,
    node                TEXT NOT NULL,
    attempts            TEXT NOT NULL
);
CREATE INDEX request_logs_ts_idx ON request_logs (ts_ms, id);
CREATE INDEX request_logs_key_idx ON request_logs (key_id, ts_ms);
CREATE INDEX request_logs_account_idx ON request_logs (account_id, ts_ms);
CREATE INDEX request_logs_model_idx ON request_logs (model, ts_ms);
-- Partial: people filter for failures; indexing every 2xx would tax ingest for nothing.
CREATE INDEX request_logs_status_idx ON request_logs (status, ts_ms) WHERE status >= 400;
CREATE INDEX request_logs_error_idx ON request_logs (error_class, ts_ms) WHERE error_class IS NOT NULL;

CREATE TABLE audit_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms       BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_events_ts_idx ON audit_events (ts_ms, id);

CREATE TABLE changes (
    version     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    deleted     BOOLEAN NOT NULL,
    ts_ms       BIGINT NOT NULL
);

CREATE TABLE routing_policy (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    policy        TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
