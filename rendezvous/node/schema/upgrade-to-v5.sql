-- Version 4 to 5: field-test results (docs/NAT_CHECK.md, the field test). ``body`` is the
-- record as JSON (rendezvous/node/results/records.py says what it keeps);
-- ``network`` is the submitter's /24 or /48, never a full address.
CREATE TABLE results (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('nat-check', 'outcome')),
    received DOUBLE PRECISION NOT NULL,
    network TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX results_by_received ON results (received);
