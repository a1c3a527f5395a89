"""The schema, as SQLAlchemy 2 declarative models.

Changes to this file must come with an Alembic migration in `migrations/versions/`.
JSON columns are JSONB on PostgreSQL and JSON (text) elsewhere.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """DateTime(timezone=True) that reads back as UTC everywhere: SQLite stores no zone, so the
    values it returns are naive and are given UTC here (they were written in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Barclamp(Base):
    __tablename__ = "barclamps"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[str] = mapped_column(String(32), default="0")
    source_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    roles: Mapped[list[Role]] = relationship(back_populates="barclamp", order_by="Role.id")


class Role(Base):
    __tablename__ = "roles"
    id: Mapped[int] = mapped_column(primary_key=True)
    barclamp_id: Mapped[int] = mapped_column(ForeignKey("barclamps.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    jig: Mapped[str] = mapped_column(String(64), default="noop")
    requires: Mapped[list] = mapped_column(JSONType, default=list)
    flags: Mapped[list] = mapped_column(JSONType, default=list)
    wants_attribs: Mapped[list] = mapped_column(JSONType, default=list)
    conflicts: Mapped[list] = mapped_column(JSONType, default=list)
    template: Mapped[dict] = mapped_column(JSONType, default=dict)
    scripts: Mapped[list] = mapped_column(JSONType, default=list)
    # Migration 0010: {network: [fields]} of the network template the role's runs derive values from
    # (barclamp.yml `reruns-on-networks`; [] is any field): a change there re-queues its active
    # noderoles (crowbar.services.network.changes).
    reruns_on_networks: Mapped[dict] = mapped_column(JSONType, default=dict, server_default="{}")
    barclamp: Mapped[Barclamp] = relationship(back_populates="roles")

    def has(self, flag: str) -> bool:
        return flag in (self.flags or [])


class Attrib(Base):
    __tablename__ = "attribs"
    id: Mapped[int] = mapped_column(primary_key=True)
    barclamp_id: Mapped[int] = mapped_column(ForeignKey("barclamps.id", ondelete="CASCADE"), index=True)
    role_id: Mapped[int | None] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    map: Mapped[str] = mapped_column(Text)
    default: Mapped[object] = mapped_column(JSONType, nullable=True)
    schema: Mapped[dict] = mapped_column(JSONType, default=dict)
    writable: Mapped[bool] = mapped_column(Boolean, default=True)


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    alive: Mapped[bool] = mapped_column(Boolean, default=True)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    bootenv: Mapped[str] = mapped_column(String(64), default="local")
    discovery: Mapped[dict] = mapped_column(JSONType, default=dict)
    hints: Mapped[dict] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Provisioning (migration 0003): the lifecycle state (crowbar.provisioner.lifecycle), why it is
    # there, since when; the OS to install; how to power it.
    state: Mapped[str] = mapped_column(String(32), default="ready", server_default="ready")
    state_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    state_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    os: Mapped[str | None] = mapped_column(String(64))
    boot_mac: Mapped[str | None] = mapped_column(String(17), unique=True)
    power_driver: Mapped[str] = mapped_column(String(32), default="manual", server_default="manual")
    power: Mapped[dict] = mapped_column(JSONType, default=dict)
    agent_action: Mapped[str | None] = mapped_column(String(16))  # reboot | poweroff, for the agent to take
    # Migration 0005: the one-time nonce in the node's latest discovery boot script (SHA-256, never
    # the nonce itself) and until when it may re-find the node (crowbar.services.boot, docs/security.md).
    boot_nonce_hash: Mapped[str | None] = mapped_column(String(64))
    boot_nonce_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Migration 0006: the OS install (crowbar.services.install): image, disk, firmware, the phase
    # the installer reports with bytes written, and when each step started.
    install: Mapped[dict] = mapped_column(JSONType, default=dict, server_default="{}")
    # Migration 0008: its tags (NodeTag), kept by crowbar.services.os_rules.
    tag_rows: Mapped[list["NodeTag"]] = relationship(cascade="all, delete-orphan", passive_deletes=True,
                                                     order_by="NodeTag.tag")


class NodeMac(Base):
    """Every MAC a node reported: how a machine that boots again is found again."""

    __tablename__ = "node_macs"
    mac: Mapped[str] = mapped_column(String(17), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)


class AgentJob(Base):
    """A script for a node's discovery agent to run (how the script jig reaches such nodes)."""

    __tablename__ = "agent_jobs"
    __table_args__ = (Index("ix_agent_jobs_node_state", "node_id", "state"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id"))
    script: Mapped[str] = mapped_column(Text)
    # script (a jig's run) | install (write the OS image) | erase (release): what its result moves
    kind: Mapped[str] = mapped_column(String(16), default="script", server_default="script")
    timeout: Mapped[int] = mapped_column(Integer, default=3600)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | sent | done
    exit_code: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PowerRequest(Base):
    """A power action asked for a node, carried out by a server's power worker outside any
    transaction: queued -> running -> succeeded | failed. `result` is the driver's line (for
    `status`: on, off or unknown), or why it failed."""

    __tablename__ = "power_requests"
    __table_args__ = (Index("ix_power_requests_state_node", "state", "node_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # on | off | cycle | status
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | succeeded | failed
    result: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="system")
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id"))  # whose worker runs it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    system: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="proposed")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeploymentRole(Base):
    __tablename__ = "deployment_roles"
    __table_args__ = (UniqueConstraint("deployment_id", "role_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), index=True)
    proposed: Mapped[dict] = mapped_column(JSONType, default=dict)
    committed: Mapped[dict] = mapped_column(JSONType, default=dict)
    # Migration 0009: the node tag the role was last bound by (crowbar.services.deployments.bind):
    # a commit binds the nodes that gained it since; an export names it instead of the nodes.
    tag: Mapped[str | None] = mapped_column(String(64))


class NodeRole(Base):
    __tablename__ = "node_roles"
    __table_args__ = (
        UniqueConstraint("node_id", "role_id"),
        # The annealer scans todo noderoles in (cohort, id) order. Queries by node use the unique
        # (node_id, role_id) index: no (node_id, state) index, which every state change would also
        # write (migration 0011).
        Index("ix_node_roles_state_cohort_id", "state", "cohort", "id"),
        Index("ix_node_roles_deployment_state", "deployment_id", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), index=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    state: Mapped[str] = mapped_column(String(16), default="proposed")
    cohort: Mapped[int] = mapped_column(Integer, default=0)
    proposed: Mapped[dict] = mapped_column(JSONType, default=dict)
    committed: Mapped[dict] = mapped_column(JSONType, default=dict)
    wall: Mapped[dict] = mapped_column(JSONType, default=dict)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NodeRoleEdge(Base):
    """parent must be active before child may run."""

    __tablename__ = "node_role_edges"
    parent_id: Mapped[int] = mapped_column(ForeignKey("node_roles.id", ondelete="CASCADE"), primary_key=True)
    child_id: Mapped[int] = mapped_column(
        ForeignKey("node_roles.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Server(Base):
    """A running `crowbar server` process; its heartbeat tells others whether its runs are alive."""

    __tablename__ = "servers"
    id: Mapped[int] = mapped_column(primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_state_server", "state", "server_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    node_role_id: Mapped[int] = mapped_column(ForeignKey("node_roles.id", ondelete="CASCADE"), index=True)
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id"))
    state: Mapped[str] = mapped_column(String(16), default="running")  # running | succeeded | failed | lost
    attrs: Mapped[dict] = mapped_column(JSONType, default=dict)
    log: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Event(Base):
    """Audit trail: every state change, who did it, when, from and to."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_object", "object_type", "object_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), default="system")
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    """An account: its role says what its tokens may do (crowbar.services.users: ROLES)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | operator | viewer
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A token, stored as its SHA-256 hash: a user's (kind "user") or a node agent's (kind "node")."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="user")  # user | node
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: never
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OsRules(Base):
    """The OS rules (crowbar.provisioner.rules): one row, id 1, the document as set (migration 0008)."""

    __tablename__ = "os_rules"
    id: Mapped[int] = mapped_column(primary_key=True)
    document: Mapped[dict] = mapped_column(JSONType, default=dict)  # {"rules": [...], "default": {...}}
    source: Mapped[str] = mapped_column(Text, default="")  # the YAML as the operator gave it
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class NodeTag(Base):
    """A node's tags: the operator's (its `tags` attrib) and the ones its OS rule gives, kept so that
    nodes are found by tag in SQL (`crowbar nodes list --tag`) (migration 0008)."""

    __tablename__ = "node_tags"
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
