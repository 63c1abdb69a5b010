"""`studyhall demo`: a small sample course to try Studyhall with, loaded idempotently.

It makes a mentor, an agent and a student (demo accounts), adds the sample documents in
`handlers/demo_data/` (one subject: photosynthesis, matching static/demo.html) to the
course `DEMO_COURSE`, schedules one live room hosted by the mentor, and starts a direct
thread in which the mentor welcomes the student (the threads page starts a thread from
user ids, which a newcomer does not know). Every step looks for what an earlier run made
before making it, so a second run creates nothing and prints the same sign-ins: accounts
are found by email, documents by their text's hash (the knowledge base's own duplicate
check), the room by its host and title, the thread by its pair of members and the
welcome by its client_id.

The sample files keep each paragraph on one line: the offline tutor quotes whole
sentences and treats a line break as a sentence end, so hard-wrapped text would be
quoted in fragments.

Passwords are fixed, published demo values rather than generated ones: the same
sign-ins then work whichever machine, data dir or `DATABASE_URL` the command ran
against, nothing secret has to be stored anywhere, and the README can show them. The
price is that anyone who knows them can sign in, so the accounts are named as demo
accounts, live on the reserved `.example` domain, and the command's output says not to
load the demo on a server others can reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from importlib import resources
from typing import Any
from uuid import UUID

from handlers import auth, threads
from handlers.core import Actor, Core
from handlers.rooms import sessions as rooms
from rag.retrieval import KnowledgeBase
from storage import demo as demo_store
from storage import messages, users
from storage import rooms as room_store
from storage.records import Role

DEMO_COURSE = "biology-101"
COURSE_TITLE = "Biology 101 · Photosynthesis"
ROOM_TITLE = "Photosynthesis Q&A (demo)"
ROOM_CAPACITY = 30
SOURCE_PREFIX = "studyhall-demo:"
# Nobody signs in to run the command; the room and thread are made as the mentor with this token id.
NO_TOKEN = UUID(int=0)
WELCOME_CLIENT_ID = "studyhall-demo-welcome"
WELCOME = (
    "Welcome to Biology 101! I am your mentor for this demo course. Write to me here about "
    "photosynthesis, try the tutor on the course page, or join my live Q&A room from the "
    "rooms page."
)


@dataclass(frozen=True)
class DemoAccount:
    role: str
    email: str
    name: str
    password: str
    try_on: str  # the page this account is for


ACCOUNTS = (
    DemoAccount("mentor", "mentor@demo.studyhall.example", "Demo Mentor", "demo-mentor-pass", "rooms"),
    DemoAccount("agent", "agent@demo.studyhall.example", "Demo Agent", "demo-agent-pass", "console"),
    DemoAccount("student", "student@demo.studyhall.example", "Demo Student", "demo-student-pass", "threads"),
)


@dataclass(frozen=True)
class SampleDocument:
    name: str  # file name in demo_data/
    title: str  # its first Markdown heading
    text: str


@dataclass
class DemoReport:
    """What a run found and what it made (`created_*`), for the command's output and tests."""

    accounts: list[tuple[DemoAccount, bool]] = field(default_factory=list)
    documents: list[tuple[SampleDocument, bool]] = field(default_factory=list)
    room: dict[str, Any] | None = None
    room_created: bool = False
    thread_id: UUID | None = None
    welcome_created: bool = False

    @property
    def created(self) -> int:
        made = sum(c for _, c in self.accounts) + sum(c for _, c in self.documents)
        return made + int(self.room_created) + int(self.welcome_created)


def sample_documents() -> list[SampleDocument]:
    """The sample course, shipped as package data (pyproject.toml `package-data`)."""
    folder = resources.files("handlers") / "demo_data"
    docs = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".md"):
            continue
        text = entry.read_text(encoding="utf-8")
        title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# ")), entry.name)
        docs.append(SampleDocument(entry.name, title, text))
    return docs


async def _account(core: Core, account: DemoAccount) -> tuple[dict[str, Any], bool]:
    """The demo account, made if missing. An existing one is left as it is (its role and
    password too): the command never changes an account it did not just make."""
    async with core.db.connection() as conn:
        row = await users.get_user_by_email(conn, account.email)
    if row is not None:
        return row.public(), False
    made = await auth.create_user(
        core, email=account.email, password=account.password, name=account.name, role=account.role
    )
    return made, True


def _acting(user: dict[str, Any]) -> Actor:
    return Actor(user_id=user["id"], role=Role(user["role"]), name=user["name"], token_id=NO_TOKEN)


async def _welcome(core: Core, mentor: dict[str, Any], student: dict[str, Any]) -> tuple[UUID, bool]:
    """The mentor's direct thread with the student, holding one welcome message. Written
    straight to storage: the command has no message pipeline (no sockets to deliver to),
    and a running server's clients read it with the thread's history."""
    made = await threads.create(core, _acting(mentor), kind="direct", member_ids=[student["id"]], title=None)
    conv = made["conversation"]
    async with core.db.connection() as conn:
        _, duplicate = await messages.insert(
            conn, conversation_id=conv["id"], sender_id=mentor["id"], role="user", content=WELCOME,
            client_id=WELCOME_CLIENT_ID,
        )
    return conv["id"], not duplicate


def next_start(now: datetime) -> datetime:
    """Tomorrow at 16:00 UTC: in the future whenever the room is made, a round hour."""
    return datetime.combine((now + timedelta(days=1)).date(), time(16, 0), tzinfo=UTC)


async def _room(core: Core, mentor: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The mentor's demo room while it is scheduled or live; a new one once it has ended
    or been cancelled (so there is always a room to try)."""
    async with core.db.connection() as conn:
        hosted = await room_store.list_sessions(conn, status=None, host_id=mentor["id"], limit=100)
    for row in hosted:
        if row.title == ROOM_TITLE and row.status in ("scheduled", "live"):
            return row.to_wire(), False
    made = await rooms.create(
        core, _acting(mentor), title=ROOM_TITLE, type="qa",
        scheduled_start_time=next_start(datetime.now(UTC)), max_participants=ROOM_CAPACITY, is_featured=True,
    )
    return made["live_session"], True


async def load_demo(core: Core, kb: KnowledgeBase) -> DemoReport:
    """Load the sample course into `kb` and the database; safe to run again, and twice at
    once (one run waits for the other: see storage/demo.py)."""
    async with core.db.connection() as conn:
        await demo_store.lock(conn)
        try:
            return await _load(core, kb)
        finally:
            await demo_store.unlock(conn)


async def _load(core: Core, kb: KnowledgeBase) -> DemoReport:
    report = DemoReport()
    made: dict[str, dict[str, Any]] = {}
    for account in ACCOUNTS:
        user, created = await _account(core, account)
        made[account.role] = user
        report.accounts.append((account, created))
    mentor = made["mentor"]

    await kb.ensure_index()
    for doc in sample_documents():
        _, created = await kb.ingest_text(
            doc.title, doc.text, source=SOURCE_PREFIX + doc.name, language="en", course=DEMO_COURSE,
            created_by=mentor["id"],
        )
        report.documents.append((doc, created))

    if mentor["role"] in rooms.CREATOR_ROLES:
        report.room, report.room_created = await _room(core, mentor)
    if made["student"]["role"] != "guest":
        report.thread_id, report.welcome_created = await _welcome(core, mentor, made["student"])
    return report


def render(report: DemoReport, base_url: str) -> str:
    """The command's output: what to open and how to sign in. Nothing in it depends on
    whether this run made things, except the last line."""
    docs = report.documents
    lines = [
        f"Studyhall demo: {COURSE_TITLE} (course {DEMO_COURSE!r}), {len(docs)} documents:",
        *(f"  - {doc.title}" for doc, _ in docs),
        "",
        "Demo accounts (published passwords: load the demo only on a server nobody else can reach):",
    ]
    width = max(len(a.email) for a, _ in report.accounts)
    for account, _ in report.accounts:
        lines.append(f"  {account.role:<8} {account.email:<{width}}  password: {account.password}")
    if report.room is not None:
        start = report.room["scheduled_start_time"]
        when = start.strftime("%Y-%m-%d %H:%M UTC") if isinstance(start, datetime) else str(start)
        room = f"{report.room['title']!r}, {report.room['status']}, starts {when}"
        lines += ["", f"Live room: {room}, hosted by the mentor."]
    lines += [
        "",
        "With `studyhall serve` running, open:",
        f"  {base_url}/static/demo.html      the course page with the tutor widget (no sign-in: a guest)",
        f"  {base_url}/static/threads.html   message threads: sign in as the student; the mentor has written",
        f"  {base_url}/static/rooms.html     live rooms: the mentor starts the room, the student joins it",
        f"  {base_url}/static/console.html   the agent console: sign in as the agent; tutor hand-overs land here",
        "",
    ]
    if report.created:
        lines.append(f"Loaded: {report.created} new item(s) (accounts, documents, room, welcome message).")
    else:
        lines.append("Nothing new: the demo was already loaded.")
    return "\n".join(lines)
