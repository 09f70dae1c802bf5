-- Per-pipeline summaries by status (the decision after each attempt) read an index instead of
-- sorting the pipeline's jobs.
CREATE INDEX jobs_pipeline_status ON jobs (pipeline_id, status, allow_failure, failure_allowed);
