-- Knowledge base: uploaded documents and their retrievable chunks.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE documents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title         text NOT NULL,
    source        text,
    language      text,
    course        text,
    -- sha256 of the normalised text: the same document uploaded twice is stored once.
    content_hash  text NOT NULL UNIQUE,
    content       text NOT NULL,
    created_by    uuid REFERENCES users(id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_course_idx ON documents (course, created_at DESC);

CREATE TABLE chunks (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id      uuid NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    chunk_index      integer NOT NULL,
    content          text NOT NULL,
    start_char       integer NOT NULL,
    end_char         integer NOT NULL,
    token_count      integer NOT NULL,
    heading_path     text[] NOT NULL DEFAULT '{}',
    course           text,  -- copied from documents.course so filters need no join
    -- Which embedder made `embedding`. No fixed dimension, so the model can change;
    -- each model gets its own partial HNSW index over `embedding::vector(dim)`.
    embedding_model  text,
    embedding        vector,
    -- 'english': course material is mostly English, and stemming lets "installing" match
    -- "install". Text in other languages still works: query and chunks go through the same
    -- config, and the vector half of hybrid search does not depend on it.
    tsv              tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, chunk_index)
);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
CREATE INDEX chunks_course_idx ON chunks (course);
-- The default embedder (hashing-384-v1). Name and shape must match
-- storage.documents.vector_index_name / ensure_vector_index.
CREATE INDEX chunks_hnsw_hashing_384_v1 ON chunks
    USING hnsw ((embedding::vector(384)) vector_cosine_ops)
    WHERE embedding_model = 'hashing-384-v1';
