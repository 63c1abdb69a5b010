"""Support tickets: escalation, claiming and hand-back (service), and the queue with its
SLA watcher and auto-assignment (queue)."""
