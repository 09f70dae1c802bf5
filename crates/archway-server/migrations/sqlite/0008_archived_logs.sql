-- A finished attempt's log moves from log_chunks to the server's storage (the data directory
-- or the object store), named by its digest; log_digest says where it went. The partial index
-- finds the finished attempts whose log is still in the database.
ALTER TABLE attempts ADD COLUMN log_digest TEXT;
CREATE INDEX attempts_log_unarchived ON attempts (id) WHERE log_digest IS NULL;
