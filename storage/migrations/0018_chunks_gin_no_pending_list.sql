-- Full-text search reads the GIN index of chunks.tsv, and with GIN's default `fastupdate`
-- new entries first go to a pending list that every query then scans in full, entry by
-- entry, until a vacuum merges it (up to gin_pending_list_limit, 4MB, of unsorted entries).
-- Chunks are written in ingestion batches and read by every question, so the index is kept
-- merged at each insert instead: measured on 100k chunks with a pending list of 180 pages
-- (bench/retrieval_bench.py, docs/performance.md), the full-text query's mean fell by about
-- a fifth and its p95 by more. Ingestion pays a little more per chunk.
ALTER INDEX chunks_tsv_idx SET (fastupdate = off);
SELECT gin_clean_pending_list('chunks_tsv_idx'::regclass);
