-- Variables of type `file` (GitLab's): a JSON array of names. Jobs get such a variable as the
-- path of a file holding its value.
ALTER TABLE pipelines ADD COLUMN file_vars TEXT;
