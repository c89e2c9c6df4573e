-- API-key vault and usage statistics.
-- A key's secret is stored only sealed (AES-256-GCM under an Argon2id key derived from the
-- owner's passphrase); see docs/vault.md for the record format. The KDF parameters are stored
-- per record so the defaults can be raised without breaking old records.
CREATE TABLE api_keys (
    id                     BLOB PRIMARY KEY,
    owner_id               BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                   TEXT NOT NULL,
    service                TEXT NOT NULL,
    environment            TEXT NOT NULL CHECK (environment IN ('development', 'staging', 'production')),
    description            TEXT,
    website_url            TEXT,
    docs_url               TEXT,
    tags                   TEXT NOT NULL DEFAULT '[]',   -- JSON array, for display; filtered via api_key_tags
    monthly_limit          INTEGER,
    monthly_cost           REAL,
    rotation_interval_days INTEGER NOT NULL CHECK (rotation_interval_days BETWEEN 1 AND 365),
    status                 TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'expired', 'revoked')),
    preview                TEXT NOT NULL,
    seal_version           INTEGER NOT NULL,
    kdf_memory_kib         INTEGER NOT NULL,
    kdf_iterations         INTEGER NOT NULL,
    kdf_parallelism        INTEGER NOT NULL,
    salt                   BLOB NOT NULL,
    nonce                  BLOB NOT NULL,
    ciphertext             BLOB NOT NULL,                -- ciphertext || 16-byte GCM tag
    passphrase_check       BLOB NOT NULL,                -- SHA-256 of the KDF output's second half
    secret_rotated_at      TEXT NOT NULL,
    expires_at             TEXT NOT NULL,                -- secret_rotated_at + rotation_interval_days
    usage_count            INTEGER NOT NULL DEFAULT 0,
    last_used_at           TEXT,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);
CREATE INDEX idx_api_keys_owner ON api_keys (owner_id, created_at DESC, id DESC);
CREATE INDEX idx_api_keys_owner_service ON api_keys (owner_id, service);
-- The daily expiry job scans active keys by due date.
CREATE INDEX idx_api_keys_due ON api_keys (status, expires_at);

CREATE TABLE api_key_tags (
    key_id BLOB NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    tag    TEXT NOT NULL,
    PRIMARY KEY (key_id, tag)
);
CREATE INDEX idx_api_key_tags_tag ON api_key_tags (tag, key_id);

-- Raw usage events, kept 90 days. `day` (YYYY-MM-DD, UTC) is computed by the application so
-- that both backends group by the same value.
CREATE TABLE usage_events (
    id             BLOB PRIMARY KEY,
    key_id         BLOB NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    owner_id       BLOB NOT NULL,
    endpoint       TEXT NOT NULL,
    method         TEXT NOT NULL,
    status_code    INTEGER NOT NULL,
    latency_ms     INTEGER NOT NULL,
    request_bytes  INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    success        BOOLEAN NOT NULL,
    occurred_at    TEXT NOT NULL,
    day            TEXT NOT NULL
);
CREATE INDEX idx_usage_events_owner_time ON usage_events (owner_id, occurred_at DESC);
CREATE INDEX idx_usage_events_key_time ON usage_events (key_id, occurred_at DESC, id DESC);
CREATE INDEX idx_usage_events_time ON usage_events (occurred_at);

-- Daily rollups per key, kept longer than the events. Recomputed from events (idempotent).
CREATE TABLE usage_daily (
    key_id           BLOB NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    owner_id         BLOB NOT NULL,
    day              TEXT NOT NULL,
    requests         INTEGER NOT NULL,
    successes        INTEGER NOT NULL,
    errors           INTEGER NOT NULL,
    total_latency_ms INTEGER NOT NULL,
    max_latency_ms   INTEGER NOT NULL,
    request_bytes    INTEGER NOT NULL,
    response_bytes   INTEGER NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (key_id, day)
);
CREATE INDEX idx_usage_daily_owner_day ON usage_daily (owner_id, day);

-- How far the rollup has read the events (one row).
CREATE TABLE usage_rollup_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    rolled_up_to TEXT NOT NULL
);
