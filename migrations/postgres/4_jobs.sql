-- Background jobs: one row per run (kept by the retention job) and the daily statistics report.
CREATE TABLE job_runs (
    id          UUID PRIMARY KEY,
    job         TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    trigger     TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual')),
    status      TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'skipped_locked', 'timeout')),
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    duration_ms BIGINT,
    items       BIGINT NOT NULL DEFAULT 0,
    error       TEXT
);
-- Per-job history, newest first (admin list, last run, catch-up).
CREATE INDEX idx_job_runs_job ON job_runs (job, started_at DESC, id DESC);
-- Recent failures across jobs (dashboard) and retention by age.
CREATE INDEX idx_job_runs_started ON job_runs (started_at);

-- One row per UTC day, rewritten when the report is recomputed.
CREATE TABLE daily_reports (
    day              DATE PRIMARY KEY,
    claims_submitted BIGINT NOT NULL,
    claims_resolved  BIGINT NOT NULL,
    claims_rejected  BIGINT NOT NULL,
    new_users        BIGINT NOT NULL,
    verdicts         JSONB NOT NULL DEFAULT '{}', -- {"human": {"false": 3, ...}, "ai": {...}}
    extra            JSONB NOT NULL DEFAULT '{}', -- figures added by other modules (AI calls, vault usage)
    computed_at      TIMESTAMPTZ NOT NULL
);
