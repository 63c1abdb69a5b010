-- Keep each chunk's tsvector in the row (compressed if need be) instead of out of line in
-- TOAST: ranking the full-text matches (ts_rank_cd) reads every matching row's tsvector,
-- and fetching each from TOAST was most of the full-text query's time. Measured on 100k
-- chunks (bench/retrieval_bench.py): full-text p95 11.5 -> 8.6 ms. Applies to rows written
-- from now on; `VACUUM FULL chunks` rewrites the existing ones (it locks the table).
ALTER TABLE chunks ALTER COLUMN tsv SET STORAGE MAIN;
