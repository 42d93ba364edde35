"""One night as the live page shows it, read from the ledger and kept current by cursors.

``NightView.poll(conn)`` reads what the ledger committed since the last poll: the night's
row, its cycle counts, the events and probes past their cursors (ids only grow: one
writer per night), and the incidents, repairs and fallbacks that are new or were still
open (those rows are updated in place). It returns what changed, so the page is sent
only that. The first poll reads the night whole (of its probes, only each component's
first and last: a long night holds tens of thousands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from ..faults.timeline import event_data
from ..ledger import schema as s
from ..report.agent_view import health_timeline

# The events the page shows or reads components from (never the per-call ones: a night
# records one or more a cycle).
EVENT_KINDS = (
    "component_declared",
    "unmonitored",
    "component_state",
    "fault_injected",
    "fault_cleared",
    "fault_undo_failed",
    "fault_failed",
)

_NIGHT_COLUMNS = (
    "id",
    "scenario",
    "started_at",
    "ended_at",
    "status",
    "end_reason",
    "seed",
    "planned_cycles",
    "parallel",
    "hostname",
    "dry_run",
)


@dataclass
class Changes:
    """What one poll found changed: the sections to redraw, and the list items that are
    new or changed, each with what the live log says of it (None: nothing to say)."""

    summary: bool = False
    health: bool = False
    items: list[tuple[str, int, str | None]] = field(default_factory=list)  # (list, id, note)
    ended: bool = False

    def __bool__(self) -> bool:
        return self.summary or self.health or bool(self.items) or self.ended


@dataclass
class NightView:
    """The live page's model of one night (see the module's docstring)."""

    night_id: str
    night: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmonitored: set[str] = field(default_factory=set)
    first_probe: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_probe: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_events: list[dict[str, Any]] = field(default_factory=list)
    incidents: dict[int, dict[str, Any]] = field(default_factory=dict)
    repairs: dict[int, dict[str, Any]] = field(default_factory=dict)
    fallbacks: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Injected faults by (fault, occurrence); ``id`` is its fault_injected event's.
    faults: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    polls: int = 0
    # Cycles 1.._settled are done (final), with their counts.
    _settled: int = 0
    _settled_counts: dict[str, int] = field(default_factory=dict)
    _event_id: int = 0
    _probe_id: int = 0
    _incident_id: int = 0
    _repair_id: int = 0
    _fallback_id: int = 0

    @property
    def running(self) -> bool:
        return self.night.get("status") == "running"

    def poll(self, conn: Connection) -> Changes | None:
        """Read what changed since the last poll; None when the ledger has no such night."""
        first = self.polls == 0
        night = _night(conn, self.night_id)
        if night is None:
            return None
        self.polls += 1
        changes = Changes()
        was_running = self.running
        if night != self.night:
            changes.summary = True
            changes.ended = was_running and night["status"] != "running"
            self.night = night
        # A night that is not running changes no more (unless it is resumed): its counts
        # are read once, not every tick.
        if first or self.running or was_running:
            progress = self._read_progress(conn)
            if progress != self.progress:
                self.progress = progress
                changes.summary = True
        quiet = not first
        changes.health |= self._read_events(conn, changes, quiet)
        changes.health |= self._read_probes(conn, first)
        changes.health |= self._read_incidents(conn, changes, quiet)
        self._read_repairs(conn, changes, quiet)
        self._read_fallbacks(conn, changes, quiet)
        if first:
            changes.ended = False
        return changes

    # -- each table ------------------------------------------------------------------

    def _read_progress(self, conn: Connection) -> dict[str, Any]:
        """Cycles done and running, and the count of each final verdict. A done cycle never
        changes again: the cycles done from 1 up without a gap are counted once and kept
        (``_settled``), and each poll reads only the cycles after them (a 100,000-cycle
        night's whole table, read every tick, took 0.1 s)."""
        c = s.cycles.c
        rows = conn.execute(
            select(c.cycle, c.status, c.verdict, c.fallback)
            .where(c.night_id == self.night_id, c.cycle > self._settled)
            .order_by(c.cycle)
        ).all()
        tail: dict[str, int] = {}
        running = 0
        for cycle, status, verdict, fallback in rows:
            if status != "done":
                running += 1
                continue
            counts = self._settled_counts if cycle == self._settled + 1 and not tail and not running else tail
            counts["done"] = counts.get("done", 0) + 1
            if verdict:
                counts[verdict] = counts.get(verdict, 0) + 1
            if verdict == "passed" and fallback:
                counts["passed_on_fallback"] = counts.get("passed_on_fallback", 0) + 1
            if counts is self._settled_counts:
                self._settled = cycle
        total = {k: self._settled_counts.get(k, 0) + tail.get(k, 0) for k in {*self._settled_counts, *tail}}
        verdicts = {k: v for k, v in total.items() if k not in ("done", "passed_on_fallback")}
        return {
            "done": total.get("done", 0),
            "running": running,
            "verdicts": verdicts,
            "passed_on_fallback": total.get("passed_on_fallback", 0),
        }

    def _after(self, conn: Connection, table: Any, cursor: int) -> Any:
        """This night's rows of ``table`` past ``cursor`` (its id). Past the first poll
        SQLite is steered to the id's range (``night_id || ''`` cannot use the night's
        index, which would walk every row of the night each tick); ids only grow, and a
        night's rows are committed in id order (one writer per night)."""
        night = table.c.night_id
        if cursor and conn.dialect.name == "sqlite":
            night = night.op("||")("")
        return and_(night == self.night_id, table.c.id > cursor)

    def _read_events(self, conn: Connection, changes: Changes, quiet: bool) -> bool:
        e = s.events.c
        after = self._after(conn, s.events, self._event_id)
        # How far this night's events go (of every kind: the cursor passes the per-call ones too).
        top = conn.execute(select(func.max(e.id)).where(after)).scalar()
        if top is None:
            return False
        rows = conn.execute(
            select(e.id, e.ts, e.kind, e.component, e.message, e.data)
            .where(after, e.id <= top, e.kind.in_(EVENT_KINDS))
            .order_by(e.id)
        ).all()
        self._event_id = top
        health = False
        for row in rows:
            data = event_data(row.data)
            if row.kind == "component_declared" and row.component:
                # A resumed session declares them again: the latest stands.
                self.components[row.component] = {
                    "name": row.component,
                    "type": data.get("type"),
                    "target": data.get("target"),
                    "sandbox": bool(data.get("sandbox")),
                    "critical": data.get("critical"),
                }
                health = True
            elif row.kind == "unmonitored" and row.component:
                self.unmonitored.add(row.component)
                health = True
            elif row.kind == "component_state" and row.component:
                self.state_events.append({"ts": row.ts, "component": row.component, "data": row.data})
                health = True
            elif row.kind in ("fault_injected", "fault_cleared", "fault_undo_failed"):
                health |= self._fault_event(row, data, changes, quiet)
            elif row.kind == "fault_failed":
                key = (str(data.get("fault") or data.get("spec") or row.id), -row.id)
                self.faults[key] = {
                    "id": row.id,
                    "fault": data.get("fault") or data.get("spec"),
                    "spec": data.get("spec"),
                    "component": data.get("target") or row.component,
                    "injected_kind": data.get("kind"),
                    "injected_at": None,
                    "failed_at": row.ts,
                    "error": data.get("error") or row.message,
                    "cleared_at": None,
                    "clear_reason": None,
                    "undo_failed": False,
                }
                note = f"fault not injected: {row.message}"
                changes.items.append(("faults", row.id, note if quiet else None))
        return health

    def _fault_event(self, row: Any, data: dict[str, Any], changes: Changes, quiet: bool) -> bool:
        key = (str(data.get("fault", "")), int(data.get("occurrence", 1)))
        if row.kind == "fault_injected":
            fault = {
                "id": row.id,
                "fault": key[0],
                "spec": data.get("spec"),
                "component": data.get("target") or row.component,
                "injected_kind": data.get("kind"),
                "mechanism": data.get("mechanism"),
                "cycle": data.get("cycle"),
                "injected_at": row.ts,
                "cleared_at": None,
                "clear_reason": None,
                "undo_failed": False,
            }
            self.faults[key] = fault
            note = f"fault injected: {fault['spec'] or fault['fault']} on {fault['component']}"
        else:
            fault = self.faults.get(key, {})
            if not fault:
                return False
            fault["cleared_at"] = row.ts
            fault["clear_reason"] = data.get("reason")
            fault["undo_failed"] = row.kind == "fault_undo_failed"
            what = "could not be undone" if fault["undo_failed"] else "cleared"
            why = data.get("reason") or "no reason recorded"
            note = f"fault {what}: {fault['spec'] or fault['fault']} ({why})"
        changes.items.append(("faults", int(fault["id"]), note if quiet else None))
        return True

    def _read_probes(self, conn: Connection, first: bool) -> bool:
        p = s.probes.c
        columns = (p.id, p.component, p.ts, p.healthy, p.latency_s, p.fault_kind, p.detail, p.trigger)
        if first:
            # Only each component's first and last probe: what the page shows of them.
            ends = (
                select(func.min(p.id).label("lo"), func.max(p.id).label("hi"))
                .where(p.night_id == self.night_id)
                .group_by(p.component)
                .subquery()
            )
            ids = select(ends.c.lo).union(select(ends.c.hi))
            query = select(*columns).where(p.id.in_(ids))
        else:
            query = select(*columns).where(self._after(conn, s.probes, self._probe_id))
        rows = conn.execute(query.order_by(p.id)).all()
        for row in rows:
            probe = dict(row._mapping)
            self._probe_id = max(self._probe_id, probe["id"])
            self.first_probe.setdefault(probe["component"], probe)
            self.last_probe[probe["component"]] = probe
        return bool(rows)

    def _read_incidents(self, conn: Connection, changes: Changes, quiet: bool) -> bool:
        i = s.incidents.c
        # Open incidents are read again each time: their rows are updated in place.
        watched = [k for k, v in self.incidents.items() if v["verified_at"] is None]
        rows = _changed_rows(conn, s.incidents, self._new_or(i, self._incident_id, watched), i.id)
        changed = False
        for row in rows:
            self._incident_id = max(self._incident_id, row["id"])
            before = self.incidents.get(row["id"])
            if before == row:
                continue
            self.incidents[row["id"]] = row
            changed = True
            changes.items.append(("incidents", row["id"], _incident_note(row, before) if quiet else None))
        return changed

    def _read_repairs(self, conn: Connection, changes: Changes, quiet: bool) -> None:
        r = s.repairs.c
        # A repair is updated when it ends, and again when a probe verifies it.
        watched = [k for k, v in self.repairs.items() if not v["verified"]]
        for row in _changed_rows(conn, s.repairs, self._new_or(r, self._repair_id, watched), r.id):
            self._repair_id = max(self._repair_id, row["id"])
            before = self.repairs.get(row["id"])
            if before == row:
                continue
            self.repairs[row["id"]] = row
            changes.items.append(("repairs", row["id"], _repair_note(row, before) if quiet else None))
            # The incident's outcome names its repairs.
            if row["incident_id"] in self.incidents:
                changes.items.append(("incidents", row["incident_id"], None))

    def _read_fallbacks(self, conn: Connection, changes: Changes, quiet: bool) -> None:
        f = s.fallbacks.c
        watched = [k for k, v in self.fallbacks.items() if v["ended_at"] is None]
        for row in _changed_rows(conn, s.fallbacks, self._new_or(f, self._fallback_id, watched), f.id):
            self._fallback_id = max(self._fallback_id, row["id"])
            before = self.fallbacks.get(row["id"])
            if before == row:
                continue
            self.fallbacks[row["id"]] = row
            changes.health = True  # the health table names the fallback in use
            note = f"fallback {row['kind']} for {row['component']} " + (
                "ended" if row["ended_at"] is not None else "started"
            )
            changes.items.append(("fallbacks", row["id"], note if quiet else None))

    def _new_or(self, c: Any, cursor: int, watched: list[int]) -> Any:
        """This night's rows past ``cursor``, and the ``watched`` ones again."""
        return and_(c.night_id == self.night_id, or_(c.id > cursor, c.id.in_(watched)))

    # -- what the page draws from it --------------------------------------------------

    def timeline(self) -> dict[str, list[dict[str, Any]]]:
        return health_timeline(self.components, self.unmonitored, self.first_probe, self.state_events)

    def component_rows(self) -> list[dict[str, Any]]:
        """Each declared component with its state now: the last state its monitor
        recorded, its last probe, its open incident and fallback."""
        timeline = self.timeline()
        open_incident = {i["component"]: i for i in self.incidents.values() if i["verified_at"] is None}
        in_fallback = {f["component"]: f for f in self.fallbacks.values() if f["ended_at"] is None}
        rows = []
        for name, comp in self.components.items():
            points = timeline.get(name) or []
            if name in self.unmonitored:
                state, since = "not monitored", None
            elif points:
                state, since = points[-1]["state"], points[-1]["ts"]
            else:
                state, since = "not probed yet", None
            rows.append(
                {
                    **comp,
                    "state": state,
                    "since": since,
                    "probe": self.last_probe.get(name),
                    "incident": open_incident.get(name),
                    "fallback": in_fallback.get(name),
                }
            )
        return rows

    def repairs_of(self, incident_id: int) -> list[dict[str, Any]]:
        return [r for r in self.repairs.values() if r["incident_id"] == incident_id]

    def fallbacks_of(self, incident_id: int) -> list[dict[str, Any]]:
        return [f for f in self.fallbacks.values() if f["incident_id"] == incident_id]


def _night(conn: Connection, night_id: str) -> dict[str, Any] | None:
    n = s.nights.c
    row = conn.execute(select(*(n[c] for c in _NIGHT_COLUMNS)).where(n.id == night_id)).first()
    return dict(row._mapping) if row is not None else None


def _changed_rows(conn: Connection, table: Any, where: Any, order: Any) -> list[dict[str, Any]]:
    columns = [col for col in table.c if col.key != "night_id"]
    return [dict(r._mapping) for r in conn.execute(select(*columns).where(where).order_by(order))]


def _incident_note(row: dict[str, Any], before: dict[str, Any] | None) -> str | None:
    what = f"incident {row['id']} on {row['component']} ({row['fault_kind']})"
    if before is None:
        return f"{what}: detected"
    if row["verified_at"] is not None and before["verified_at"] is None:
        return f"{what}: {row['state']}, verified healthy by a probe"
    if row["state"] != before["state"]:
        return f"{what}: {row['state']}"
    return None


def _repair_note(row: dict[str, Any], before: dict[str, Any] | None) -> str | None:
    what = f"repair {row['strategy']} of {row['component']} (incident {row['incident_id']})"
    if before is None:
        return f"{what}: started" if row["result"] is None else f"{what}: {row['result']}"
    if row["result"] != before["result"] and row["result"] is not None:
        return f"{what}: {row['result']}"
    if row["verified"] and not before["verified"]:
        return f"{what}: verified"
    return None
