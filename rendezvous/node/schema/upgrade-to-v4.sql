-- Version 3 to 4: incoming buddy requests are read a page at a time, by
-- requester name (docs/PROTOCOL.md, buddy-list paging).
DROP INDEX buddies_by_buddy;
CREATE INDEX buddies_incoming ON buddies (buddy, state, owner);
