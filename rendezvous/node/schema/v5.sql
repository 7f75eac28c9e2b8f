-- Account store, schema version 5: accounts, buddy lists and field-test results.
CREATE TABLE version (version INTEGER NOT NULL);

CREATE TABLE accounts (
    name TEXT PRIMARY KEY,                 -- OpaqueString-prepared user name
    password_hash BLOB NOT NULL,           -- scrypt(password, salt)
    salt BLOB NOT NULL,
    scrypt_n INTEGER NOT NULL,
    scrypt_r INTEGER NOT NULL,
    scrypt_p INTEGER NOT NULL,
    turn_realm TEXT NOT NULL,              -- realm the TURN keys were made for
    turn_key_md5 BLOB NOT NULL,            -- RFC 8489 §9.2.2 long-term keys
    turn_key_sha256 BLOB NOT NULL,
    created_at REAL NOT NULL
);

-- One row per direction. 'requested': owner asked buddy; 'accepted': both
-- agreed (stored both ways). Presence is shared only when accepted. A
-- request may name a user with no account (kept like any other, so asking
-- does not tell who exists); removing an account deletes the rows naming it.
CREATE TABLE buddies (
    owner TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    buddy TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('requested', 'accepted')),
    since REAL NOT NULL,
    PRIMARY KEY (owner, buddy)
);
CREATE INDEX buddies_incoming ON buddies (buddy, state, owner);  -- incoming requests, a page at a time

-- Field-test results (docs/NAT_CHECK.md, the field test): the record as JSON; network is the
-- submitter's /24 or /48, never a full address.
CREATE TABLE results (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('nat-check', 'outcome')),
    received DOUBLE PRECISION NOT NULL,
    network TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX results_by_received ON results (received);
