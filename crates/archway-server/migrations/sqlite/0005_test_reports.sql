-- What a job's JUnit reports (`artifacts:reports:junit`) said: a JSON object with the counts
-- and the first failing cases (archway_api::TestSummary).
ALTER TABLE jobs ADD COLUMN test_summary TEXT;
