-- Version 1 to 2: buddy lists.
CREATE TABLE buddies (
    owner TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    buddy TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('requested', 'accepted')),
    since REAL NOT NULL,
    PRIMARY KEY (owner, buddy)
);
CREATE INDEX buddies_by_buddy ON buddies (buddy);
