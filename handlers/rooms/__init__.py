"""Live session rooms: the session lifecycle and favorites (sessions), and what happens
inside a started room: seats, chat policy, hands, moderation (live)."""
