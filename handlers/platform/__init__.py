"""The platform API: API keys for an app's backend, and what a key may do
(docs/integration.md, "API keys").

- keys.py: keys made, listed, revoked and rotated by admins; the check of a key per request.
- operations.py: users, documents, live sessions, conversations, messages and tickets, as the app.
"""
