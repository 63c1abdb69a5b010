-- Room on each page for the new row version of a conversation whose last_seq moves
-- with every message, so the update is HOT (no new index entries; see
-- storage/messages.py _INSERT_BATCH).
ALTER TABLE conversations SET (fillfactor = 50);
