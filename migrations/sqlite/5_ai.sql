-- AI-assisted verdicts: the worker's bookkeeping on each claim. `ai_started_at` is the lease
-- start of the current attempt (a claim left in ai_processing past the lease is taken again),
-- `ai_attempts` counts attempts, `ai_error`/`ai_raw_output` keep why the last attempt failed and
-- what the model said, for reviewers.
ALTER TABLE claims ADD COLUMN ai_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE claims ADD COLUMN ai_started_at TEXT;
ALTER TABLE claims ADD COLUMN ai_error TEXT;
ALTER TABLE claims ADD COLUMN ai_raw_output TEXT;
-- The worker's scans: pending claims oldest first, and stale or failed ones for the retry job.
CREATE INDEX idx_claims_ai_work ON claims (status, ai_started_at) WHERE status IN ('pending', 'ai_processing', 'ai_failed');
