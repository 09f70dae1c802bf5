-- A job's artifacts: the archive (content-addressed in the artifact store, so identical
-- archives are stored once), when it expires, and the variables its dotenv reports give the
-- jobs after it (a JSON array of {name, value}).
ALTER TABLE jobs ADD COLUMN artifact_digest TEXT;
ALTER TABLE jobs ADD COLUMN artifact_size BIGINT;
ALTER TABLE jobs ADD COLUMN artifact_expires_ms BIGINT;
ALTER TABLE jobs ADD COLUMN dotenv TEXT;
