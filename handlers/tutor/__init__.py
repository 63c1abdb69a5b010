"""AI tutor sessions: the service that queues and answers (service), one answer from
retrieval to stream (answer), per-user limits (limits), and the fixed texts it says (texts)."""
