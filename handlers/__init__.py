"""Business logic: validation beyond types, permissions, transactions, what to tell whom."""
