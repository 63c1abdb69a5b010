-- The default embedder's HNSW index, rebuilt with a better graph: ef_construction 200
-- instead of pgvector's 64 reaches recall@10 0.99 at ef_search 200 on 100k chunks, where
-- the old graph needed ef_search 400 for 0.95 (storage/documents.py HNSW_*; measured by
-- bench/retrieval_bench.py). Rebuilding takes about a minute per 100k chunks. Indexes of
-- other models are rebuilt by dropping them and running `studyhall reindex`.
DROP INDEX IF EXISTS chunks_hnsw_hashing_384_v1;
CREATE INDEX chunks_hnsw_hashing_384_v1 ON chunks
    USING hnsw ((embedding::vector(384)) vector_cosine_ops)
    WITH (m = 16, ef_construction = 200)
    WHERE embedding_model = 'hashing-384-v1';
