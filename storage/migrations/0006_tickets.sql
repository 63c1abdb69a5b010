-- Support tickets: escalations from the AI tutor (or staff) into a human hand-off.

-- Human-readable numbers SH-000001, SH-000002, ... (a sequence never hands out a number twice).
CREATE SEQUENCE ticket_number_seq;

-- SLA lookup: hours to resolve per priority, with the names agents see in each language.
-- Operators change the hours here; new tickets take them at creation.
CREATE TABLE ticket_priorities (
    priority   text PRIMARY KEY CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    rank       smallint NOT NULL UNIQUE,
    sla_hours  numeric NOT NULL CHECK (sla_hours > 0),
    name_en    text NOT NULL,
    name_fr    text NOT NULL,
    name_ar    text NOT NULL
);
INSERT INTO ticket_priorities (priority, rank, sla_hours, name_en, name_fr, name_ar) VALUES
    ('low',    1, 72, 'Low',    'Basse',   'منخفضة'),
    ('normal', 2, 24, 'Normal', 'Normale', 'عادية'),
    ('high',   3,  8, 'High',   'Haute',   'عالية'),
    ('urgent', 4,  1, 'Urgent', 'Urgente', 'عاجلة');

CREATE TABLE tickets (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    number             text NOT NULL UNIQUE
                       DEFAULT 'SH-' || lpad(nextval('ticket_number_seq')::text, 6, '0'),
    conversation_id    uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id            uuid REFERENCES users(id) ON DELETE SET NULL,
    subject            text NOT NULL,
    category           text,
    priority           text NOT NULL REFERENCES ticket_priorities(priority),
    status             text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'assigned', 'resolved', 'closed')),
    assigned_to        uuid REFERENCES users(id) ON DELETE SET NULL,
    escalation_reason  text NOT NULL,
    -- Who escalated (NULL: the AI tutor or the system) and through what: tutor, user, staff, reopen.
    escalated_by       uuid REFERENCES users(id) ON DELETE SET NULL,
    escalation_source  text NOT NULL,
    -- The conversation's previous ticket, if any (always set when a closed conversation reopens).
    parent_ticket_id   uuid REFERENCES tickets(id) ON DELETE SET NULL,
    sla_due_at         timestamptz NOT NULL,
    sla_breached       boolean NOT NULL DEFAULT false,
    resolution         text,
    handback           text CHECK (handback IN ('ai', 'close')),
    resolved_by        uuid REFERENCES users(id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    assigned_at        timestamptz,
    resolved_at        timestamptz,
    closed_at          timestamptz
);
-- At most one open or assigned ticket per conversation: a second escalation finds the first.
CREATE UNIQUE INDEX tickets_one_active_per_conversation ON tickets (conversation_id)
    WHERE status IN ('open', 'assigned');
CREATE INDEX tickets_queue_idx ON tickets (status, sla_due_at);
CREATE INDEX tickets_assignee_idx ON tickets (assigned_to, assigned_at);
CREATE INDEX tickets_conversation_idx ON tickets (conversation_id, created_at);
CREATE INDEX tickets_sla_watch_idx ON tickets (sla_due_at)
    WHERE NOT sla_breached AND status IN ('open', 'assigned');

-- Internal notes: agents and admins only, never part of the conversation.
CREATE TABLE ticket_notes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id   uuid NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    author_id   uuid REFERENCES users(id) ON DELETE SET NULL,
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ticket_notes_ticket_idx ON ticket_notes (ticket_id, created_at);
