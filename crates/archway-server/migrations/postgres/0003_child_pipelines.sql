-- Child pipelines (`trigger: include:`): a trigger job runs no script; when it starts, the
-- coordinator creates a pipeline whose parent_job_id names it.
ALTER TABLE jobs ADD COLUMN is_trigger BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pipelines ADD COLUMN parent_job_id BIGINT REFERENCES jobs (id);
CREATE INDEX pipelines_parent_job ON pipelines (parent_job_id);
