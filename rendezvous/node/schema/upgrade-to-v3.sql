-- Version 2 to 3: a buddy request may name a user with no account (no
-- foreign key on buddies.buddy), so buddy-add does not tell who exists.
CREATE TABLE buddies_v3 (
    owner TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    buddy TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('requested', 'accepted')),
    since REAL NOT NULL,
    PRIMARY KEY (owner, buddy)
);
INSERT INTO buddies_v3 SELECT owner, buddy, state, since FROM buddies;
DROP TABLE buddies;
ALTER TABLE buddies_v3 RENAME TO buddies;
CREATE INDEX buddies_by_buddy ON buddies (buddy);
