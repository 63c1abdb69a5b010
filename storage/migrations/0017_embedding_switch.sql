-- Changing the embedding model without downtime (`studyhall reindex`, rag/retrieval.py).
-- Search uses the vectors in `chunks.embedding` of the model recorded as active here. While
-- a new model is being introduced its vectors wait in `chunk_vectors`; once every chunk has
-- one, a single transaction copies them into `chunks` and records the new model as active,
-- so every server instance switches at once (each reads this row before a search).
CREATE TABLE embedding_state (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    active_model  text,
    active_dim    integer CHECK (active_dim > 0),
    switched_at   timestamptz
);
-- An existing install keeps serving the model most of its chunks were embedded with;
-- an empty one takes the configured model on first start.
INSERT INTO embedding_state (active_model, active_dim)
SELECT (SELECT embedding_model FROM chunks WHERE embedding IS NOT NULL
        GROUP BY embedding_model ORDER BY count(*) DESC, embedding_model LIMIT 1),
       (SELECT vector_dims(embedding) FROM chunks WHERE embedding IS NOT NULL
        GROUP BY embedding_model, vector_dims(embedding) ORDER BY count(*) DESC, embedding_model LIMIT 1);

CREATE TABLE chunk_vectors (
    model      text NOT NULL,
    chunk_id   uuid NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    embedding  vector NOT NULL,
    PRIMARY KEY (model, chunk_id)
);
CREATE INDEX chunk_vectors_chunk_idx ON chunk_vectors (chunk_id);
