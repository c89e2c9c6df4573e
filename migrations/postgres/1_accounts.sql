-- Accounts: users with roles and an approval status, and rotating refresh tokens.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL,             -- stored lower-cased
    username      TEXT NOT NULL,             -- stored lower-cased
    display_name  TEXT NOT NULL,
    bio           TEXT NOT NULL DEFAULT '',
    avatar_url    TEXT,
    password_hash TEXT NOT NULL,             -- argon2id PHC string
    role          TEXT NOT NULL CHECK (role IN ('user', 'fact_checker', 'admin')),
    status        TEXT NOT NULL CHECK (status IN ('active', 'pending', 'suspended', 'rejected')),
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    last_login_at TIMESTAMPTZ
);
-- The seed's user indexes: login by email or username, filtering by role.
CREATE UNIQUE INDEX idx_users_email ON users (email);
CREATE UNIQUE INDEX idx_users_username ON users (username);
CREATE INDEX idx_users_role ON users (role, created_at DESC, id DESC);
CREATE INDEX idx_users_status ON users (status, created_at DESC, id DESC);
CREATE INDEX idx_users_created ON users (created_at DESC, id DESC);

-- A refresh token is stored only as a SHA-256 hash. Each use rotates it within its family;
-- presenting a used or revoked token revokes the whole family (theft detection).
CREATE TABLE refresh_tokens (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  UUID NOT NULL,
    token_hash TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX idx_refresh_tokens_hash ON refresh_tokens (token_hash);
CREATE INDEX idx_refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX idx_refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX idx_refresh_tokens_expires ON refresh_tokens (expires_at);
