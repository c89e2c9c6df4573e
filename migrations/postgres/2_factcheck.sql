-- Fact-checking: claims with their review workflow, verdicts (AI and human), trending scores,
-- blog articles and notifications.
CREATE TABLE claims (
    id            UUID PRIMARY KEY,
    submitter_id  UUID REFERENCES users (id) ON DELETE SET NULL,
    text          TEXT NOT NULL,
    text_hash     TEXT NOT NULL,            -- sha256 of the normalized text: repeat submissions
    category      TEXT NOT NULL,
    source_url    TEXT,
    video_url     TEXT,
    image_url     TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'ai_processing', 'ai_verdict', 'ai_failed', 'human_review', 'resolved', 'rejected')),
    priority      INTEGER NOT NULL DEFAULT 0,
    assigned_to   UUID REFERENCES users (id) ON DELETE SET NULL,
    assigned_at   TIMESTAMPTZ,
    rejection_reason TEXT,
    view_count    BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    resolved_at   TIMESTAMPTZ,
    search        TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
);
-- The seed's indexes.
CREATE INDEX idx_claims_status ON claims (status, created_at DESC, id DESC);
CREATE INDEX idx_claims_created_at ON claims (created_at DESC, id DESC);
-- Public lists (resolved only), per category and overall, newest verdict first.
CREATE INDEX idx_claims_public ON claims (resolved_at DESC, id DESC) WHERE status = 'resolved';
CREATE INDEX idx_claims_public_category ON claims (category, resolved_at DESC, id DESC) WHERE status = 'resolved';
CREATE INDEX idx_claims_submitter ON claims (submitter_id, created_at DESC, id DESC);
-- Review queue: priority, then oldest.
CREATE INDEX idx_claims_queue ON claims (priority DESC, created_at, id)
    WHERE status IN ('pending', 'ai_verdict', 'ai_failed', 'human_review');
CREATE INDEX idx_claims_text_hash ON claims (text_hash);
CREATE INDEX idx_claims_search ON claims USING GIN (search);

CREATE TABLE verdicts (
    id          UUID PRIMARY KEY,
    claim_id    UUID NOT NULL REFERENCES claims (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('ai', 'human')),
    label       TEXT NOT NULL CHECK (label IN ('true', 'false', 'misleading', 'satire', 'needs_context', 'unverifiable')),
    explanation TEXT NOT NULL,
    sources     JSONB NOT NULL DEFAULT '[]',
    confidence  DOUBLE PRECISION,
    author_id   UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (claim_id, kind)
);

-- Written by the trending recompute; read by GET claims/trending without touching claims scans.
CREATE TABLE claim_trending (
    claim_id    UUID PRIMARY KEY REFERENCES claims (id) ON DELETE CASCADE,
    score       DOUBLE PRECISION NOT NULL,
    computed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_claim_trending_score ON claim_trending (score DESC);

CREATE TABLE blogs (
    id           UUID PRIMARY KEY,
    author_id    UUID REFERENCES users (id) ON DELETE SET NULL,
    title        TEXT NOT NULL,
    slug         TEXT NOT NULL,
    content      TEXT NOT NULL,
    excerpt      TEXT NOT NULL,
    category     TEXT,
    status       TEXT NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
    read_time_minutes INTEGER NOT NULL,
    view_count   BIGINT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ,
    search       TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', title || ' ' || content)) STORED
);
CREATE UNIQUE INDEX idx_blogs_slug ON blogs (slug);
CREATE INDEX idx_blogs_published ON blogs (published_at DESC, id DESC) WHERE status = 'published';
CREATE INDEX idx_blogs_trending ON blogs (view_count DESC, id DESC) WHERE status = 'published';
CREATE INDEX idx_blogs_author ON blogs (author_id, created_at DESC, id DESC);
CREATE INDEX idx_blogs_search ON blogs USING GIN (search);

CREATE TABLE notifications (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    claim_id   UUID REFERENCES claims (id) ON DELETE CASCADE,
    read_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_notifications_user ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX idx_notifications_unread ON notifications (user_id, created_at DESC, id DESC) WHERE read_at IS NULL;
