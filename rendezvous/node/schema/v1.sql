-- Account store, schema version 1.
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
