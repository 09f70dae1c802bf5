-- Why a job ended as it did, when the coordinator decided it (e.g. a dynamic child pipeline
-- that could not be planned: its diagnostics).
ALTER TABLE jobs ADD COLUMN message TEXT;
