-- The coordinator's state (SQLite dialect; migrations/postgres holds the same schema).
-- Times are milliseconds since the Unix epoch; flags are 0/1 integers; lists are JSON text.

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,                 -- admin | registration
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,          -- sha256 of the token
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

CREATE TABLE runners (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    tags TEXT NOT NULL,
    platforms TEXT NOT NULL,
    concurrency BIGINT NOT NULL,
    run_untagged BIGINT NOT NULL,
    version TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_seen_ms BIGINT,
    draining BIGINT NOT NULL DEFAULT 0,
    revoked_ms BIGINT
);

CREATE TABLE pipelines (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    is_tag BIGINT NOT NULL,
    sha TEXT NOT NULL,
    commit_message TEXT NOT NULL,
    source TEXT,
    file TEXT NOT NULL,
    stages TEXT NOT NULL,
    variables TEXT NOT NULL,
    masked TEXT NOT NULL,
    secrets TEXT NOT NULL,
    status TEXT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT
);
CREATE INDEX pipelines_project_ref ON pipelines (project, git_ref, id);
CREATE INDEX pipelines_status ON pipelines (status);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    pipeline_id BIGINT NOT NULL REFERENCES pipelines (id),
    name TEXT NOT NULL,
    stage TEXT NOT NULL,
    stage_idx BIGINT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    needs TEXT,
    tags TEXT NOT NULL,
    platform TEXT,
    when_run TEXT NOT NULL,
    allow_failure BIGINT NOT NULL,
    interruptible BIGINT NOT NULL,
    resource_group TEXT,
    created_ms BIGINT NOT NULL,
    queued_ms BIGINT,
    started_ms BIGINT,
    finished_ms BIGINT,
    run_after_ms BIGINT,
    failure_reason TEXT,
    exit_code BIGINT,
    failure_allowed BIGINT NOT NULL DEFAULT 0,
    attempt_count BIGINT NOT NULL DEFAULT 0,
    user_retries BIGINT NOT NULL DEFAULT 0,
    system_requeues BIGINT NOT NULL DEFAULT 0,
    UNIQUE (pipeline_id, name)
);
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    number BIGINT NOT NULL,
    runner_id BIGINT NOT NULL REFERENCES runners (id),
    platform TEXT NOT NULL,
    emulated BIGINT NOT NULL,
    state TEXT NOT NULL,                -- running | success | failed | canceled | lost | handed_back
    token_hash TEXT NOT NULL UNIQUE,
    lease_expires_ms BIGINT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    started_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    exit_code BIGINT,
    reason TEXT,
    log_received BIGINT NOT NULL DEFAULT 0,
    log_stored BIGINT NOT NULL DEFAULT 0,
    log_truncated BIGINT NOT NULL DEFAULT 0,
    UNIQUE (job_id, number)
);
CREATE INDEX attempts_state_lease ON attempts (state, lease_expires_ms);
CREATE INDEX attempts_runner_state ON attempts (runner_id, state);

CREATE TABLE log_chunks (
    attempt_id BIGINT NOT NULL REFERENCES attempts (id),
    pos BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (attempt_id, pos)
);
