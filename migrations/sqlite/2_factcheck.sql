-- Fact-checking: claims with their review workflow, verdicts (AI and human), trending scores,
-- blog articles and notifications. Full-text search through FTS5 external-content tables kept
-- in sync by triggers.
CREATE TABLE claims (
    id            BLOB PRIMARY KEY,
    submitter_id  BLOB REFERENCES users (id) ON DELETE SET NULL,
    text          TEXT NOT NULL,
    text_hash     TEXT NOT NULL,
    category      TEXT NOT NULL,
    source_url    TEXT,
    video_url     TEXT,
    image_url     TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'ai_processing', 'ai_verdict', 'ai_failed', 'human_review', 'resolved', 'rejected')),
    priority      INTEGER NOT NULL DEFAULT 0,
    assigned_to   BLOB REFERENCES users (id) ON DELETE SET NULL,
    assigned_at   TEXT,
    rejection_reason TEXT,
    view_count    INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    resolved_at   TEXT
);
CREATE INDEX idx_claims_status ON claims (status, created_at DESC, id DESC);
CREATE INDEX idx_claims_created_at ON claims (created_at DESC, id DESC);
CREATE INDEX idx_claims_public ON claims (resolved_at DESC, id DESC) WHERE status = 'resolved';
CREATE INDEX idx_claims_public_category ON claims (category, resolved_at DESC, id DESC) WHERE status = 'resolved';
CREATE INDEX idx_claims_submitter ON claims (submitter_id, created_at DESC, id DESC);
CREATE INDEX idx_claims_queue ON claims (priority DESC, created_at, id)
    WHERE status IN ('pending', 'ai_verdict', 'ai_failed', 'human_review');
CREATE INDEX idx_claims_text_hash ON claims (text_hash);

CREATE VIRTUAL TABLE claims_fts USING fts5 (text, content = 'claims', content_rowid = 'rowid', tokenize = 'porter unicode61');
CREATE TRIGGER claims_fts_insert AFTER INSERT ON claims BEGIN
    INSERT INTO claims_fts (rowid, text) VALUES (new.rowid, new.text);
END;
CREATE TRIGGER claims_fts_delete AFTER DELETE ON claims BEGIN
    INSERT INTO claims_fts (claims_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
END;
CREATE TRIGGER claims_fts_update AFTER UPDATE OF text ON claims BEGIN
    INSERT INTO claims_fts (claims_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
    INSERT INTO claims_fts (rowid, text) VALUES (new.rowid, new.text);
END;

CREATE TABLE verdicts (
    id          BLOB PRIMARY KEY,
    claim_id    BLOB NOT NULL REFERENCES claims (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('ai', 'human')),
    label       TEXT NOT NULL CHECK (label IN ('true', 'false', 'misleading', 'satire', 'needs_context', 'unverifiable')),
    explanation TEXT NOT NULL,
    sources     TEXT NOT NULL DEFAULT '[]',
    confidence  REAL,
    author_id   BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (claim_id, kind)
);

CREATE TABLE claim_trending (
    claim_id    BLOB PRIMARY KEY REFERENCES claims (id) ON DELETE CASCADE,
    score       REAL NOT NULL,
    computed_at TEXT NOT NULL
);
CREATE INDEX idx_claim_trending_score ON claim_trending (score DESC);

CREATE TABLE blogs (
    id           BLOB PRIMARY KEY,
    author_id    BLOB REFERENCES users (id) ON DELETE SET NULL,
    title        TEXT NOT NULL,
    slug         TEXT NOT NULL,
    content      TEXT NOT NULL,
    excerpt      TEXT NOT NULL,
    category     TEXT,
    status       TEXT NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
    read_time_minutes INTEGER NOT NULL,
    view_count   INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    published_at TEXT
);
CREATE UNIQUE INDEX idx_blogs_slug ON blogs (slug);
CREATE INDEX idx_blogs_published ON blogs (published_at DESC, id DESC) WHERE status = 'published';
CREATE INDEX idx_blogs_trending ON blogs (view_count DESC, id DESC) WHERE status = 'published';
CREATE INDEX idx_blogs_author ON blogs (author_id, created_at DESC, id DESC);

CREATE VIRTUAL TABLE blogs_fts USING fts5 (title, content, content = 'blogs', content_rowid = 'rowid', tokenize = 'porter unicode61');
CREATE TRIGGER blogs_fts_insert AFTER INSERT ON blogs BEGIN
    INSERT INTO blogs_fts (rowid, title, content) VALUES (new.rowid, new.title, new.content);
END;
CREATE TRIGGER blogs_fts_delete AFTER DELETE ON blogs BEGIN
    INSERT INTO blogs_fts (blogs_fts, rowid, title, content) VALUES ('delete', old.rowid, old.title, old.content);
END;
CREATE TRIGGER blogs_fts_update AFTER UPDATE OF title, content ON blogs BEGIN
    INSERT INTO blogs_fts (blogs_fts, rowid, title, content) VALUES ('delete', old.rowid, old.title, old.content);
    INSERT INTO blogs_fts (rowid, title, content) VALUES (new.rowid, new.title, new.content);
END;

CREATE TABLE notifications (
    id         BLOB PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    claim_id   BLOB REFERENCES claims (id) ON DELETE CASCADE,
    read_at    TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX idx_notifications_user ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX idx_notifications_unread ON notifications (user_id, created_at DESC, id DESC) WHERE read_at IS NULL;
