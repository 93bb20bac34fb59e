"""Replay reports: one aggregate, rendered as text (terminals), JSON (machines) or HTML (auditors)."""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llm_authz.replay.runner import FLIP, MATCH, MISMATCH, SAME, UNREPRODUCIBLE, Outcome, direction


@dataclass
class Report:
    mode: str  # verify | impact
    verified: bool = False
    candidate: dict[str, str | None] = field(default_factory=dict)
    records: int = 0
    skipped: int = 0
    counts: Counter = field(default_factory=Counter)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    flips: list[dict[str, Any]] = field(default_factory=list)
    unreproducible: list[dict[str, Any]] = field(default_factory=list)
    groups: Counter = field(default_factory=Counter)
    revisions: dict[str, int] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        self.records += 1
        self.counts[outcome.kind] += 1
        if outcome.kind == MISMATCH:
            self.mismatches.append(outcome.as_dict())
            self.groups[(outcome.tenant, outcome.model, _reason(outcome.logged, outcome.replayed), "mismatch")] += 1
        elif outcome.kind == FLIP:
            self.flips.append(outcome.as_dict())
            self.groups[(outcome.tenant, outcome.model, _reason(outcome.logged, outcome.replayed),
                         direction(outcome.logged, outcome.replayed))] += 1
        elif outcome.kind == UNREPRODUCIBLE:
            self.unreproducible.append(outcome.as_dict())
            self.groups[(outcome.tenant, outcome.model, "-", "unreproducible")] += 1

    @property
    def summary(self) -> list[dict[str, Any]]:
        rows = [{"tenant": t, "model": m, "reason": r, "direction": d, "count": n}
                for (t, m, r, d), n in self.groups.items()]
        return sorted(rows, key=lambda row: (-row["count"], str(row["tenant"]), str(row["model"]), row["reason"]))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "verified": self.verified,
            "records": self.records,
            "skipped_by_filters": self.skipped,
            "revisions": [{"revision": r, "records": n} for r, n in self.revisions.items()],
            "totals": {k: self.counts.get(k, 0) for k in
                       ((MATCH, MISMATCH, UNREPRODUCIBLE) if self.mode == "verify" else (SAME, FLIP, UNREPRODUCIBLE))},
            "summary": self.summary,
            "unreproducible": self.unreproducible,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "records_per_second": round(self.records / self.elapsed_seconds) if self.elapsed_seconds else None,
        }
        if self.mode == "verify":
            out["mismatches"] = self.mismatches
        else:
            out["candidate"] = self.candidate
            out["flips"] = self.flips
        return out


def _reason(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    """The reason a change is about: the first reason that appeared, else the first that went away."""
    after_reasons = (after or {}).get("reasons", [])
    added = [r for r in after_reasons if r not in before.get("reasons", [])]
    removed = [r for r in before.get("reasons", []) if r not in after_reasons]
    return (added or removed or after_reasons or before.get("reasons") or ["-"])[0]


def _short(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    verdict = "allow" if d.get("allowed") else "deny"
    reasons = ",".join(d.get("reasons") or [])
    return f"{verdict} {d.get('status')}" + (f" ({reasons})" if reasons else "")


def render_text(report: Report, limit: int = 50) -> str:
    d = report.as_dict()
    lines = [f"llm-authz replay — {report.mode} mode",
             f"records replayed: {report.records}" + (f" (filtered out: {report.skipped})" if report.skipped else ""),
             f"log verified:     {'yes' if report.verified else 'NO (--no-verify)'}",
             "revisions:        " + (", ".join(f"{r['revision'][:12]} ({r['records']})" for r in d["revisions"]) or "-"),
             "totals:           " + ", ".join(f"{k} {v}" for k, v in d["totals"].items())]
    if report.mode == "impact":
        lines.insert(1, "candidate:        " + ", ".join(f"{k}={v}" for k, v in report.candidate.items() if v))
    if report.elapsed_seconds:
        lines.append(f"speed:            {d['records_per_second']} records/s")
    if d["summary"]:
        lines += ["", "summary (tenant, model, reason, direction: count):"]
        lines += [f"  {r['tenant']}  {r['model']}  {r['reason']}  {r['direction']}: {r['count']}" for r in d["summary"]]
    changes = report.mismatches if report.mode == "verify" else report.flips
    if changes:
        lines += ["", f"{'mismatches' if report.mode == 'verify' else 'flips'} (first {min(limit, len(changes))} of {len(changes)}):"]
        for c in changes[:limit]:
            before, after = (c["logged"], c["replayed"]) if report.mode == "verify" else (c["before"], c["after"])
            lines.append(f"  seq {c['seq']} {c['decision_id']} {c['tenant']} {c['model']}: {_short(before)} → {_short(after)}")
    if report.unreproducible:
        lines += ["", f"unreproducible (first {min(limit, len(report.unreproducible))} of {len(report.unreproducible)}):"]
        lines += [f"  seq {u['seq']} {u['decision_id']}: {u.get('detail')}" for u in report.unreproducible[:limit]]
    return "\n".join(lines) + "\n"


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d232a;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;width:100%}
th,td{border:1px solid #ccd3da;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef2f6}td.n{text-align:right}code{font-size:12px}
.allow{color:#116329}.deny{color:#a40e26}.muted{color:#667}
"""


def _cell(d: dict[str, Any] | None) -> str:
    if not d:
        return "<td>-</td>"
    cls = "allow" if d.get("allowed") else "deny"
    return f'<td class="{cls}">{html.escape(_short(d))}</td>'


def render_html(report: Report) -> str:
    d = report.as_dict()
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>llm-authz replay — {e(report.mode)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>llm-authz replay — {e(report.mode)} mode</h1>",
             '<h2>Totals</h2><table id="totals"><tr><th>records replayed</th><th>log verified</th>'
             + "".join(f"<th>{e(k)}</th>" for k in d["totals"]) + "</tr>",
             f'<tr><td class=n>{report.records}</td><td>{"yes" if report.verified else "no"}</td>'
             + "".join(f"<td class=n>{v}</td>" for v in d["totals"].values()) + "</tr></table>"]
    if report.mode == "impact":
        parts.append("<p>Candidate: " + e(", ".join(f"{k}={v}" for k, v in report.candidate.items() if v)) + "</p>")
    parts.append('<h2>Summary</h2><table id="summary"><tr><th>tenant</th><th>model</th><th>reason</th>'
                 "<th>direction</th><th>count</th></tr>")
    parts += [f"<tr><td>{e(str(r['tenant']))}</td><td>{e(str(r['model']))}</td><td>{e(r['reason'])}</td>"
              f"<td>{e(r['direction'])}</td><td class=n>{r['count']}</td></tr>" for r in d["summary"]]
    parts.append("</table>")
    changes = report.mismatches if report.mode == "verify" else report.flips
    title = "Mismatches" if report.mode == "verify" else "Flips"
    parts.append(f'<h2>{title}</h2><table id="changes"><tr><th>seq</th><th>decision id</th><th>tenant</th>'
                 "<th>model</th><th>before</th><th>after</th></tr>")
    for c in changes:
        before, after = (c["logged"], c["replayed"]) if report.mode == "verify" else (c["before"], c["after"])
        parts.append(f"<tr><td class=n>{c['seq']}</td><td><code>{e(c['decision_id'])}</code></td>"
                     f"<td>{e(str(c['tenant']))}</td><td>{e(str(c['model']))}</td>{_cell(before)}{_cell(after)}</tr>")
    if not changes:
        parts.append('<tr><td colspan=6 class=muted>none</td></tr>')
    parts.append("</table>")
    if report.unreproducible:
        parts.append('<h2>Unreproducible</h2><table id="unreproducible"><tr><th>seq</th><th>decision id</th><th>why</th></tr>')
        parts += [f"<tr><td class=n>{u['seq']}</td><td><code>{e(u['decision_id'])}</code></td><td>{e(str(u.get('detail')))}</td></tr>"
                  for u in report.unreproducible]
        parts.append("</table>")
    parts.append('<h2>Revisions</h2><table id="revisions"><tr><th>revision (content hash)</th><th>records</th></tr>')
    parts += [f"<tr><td><code>{e(r['revision'])}</code></td><td class=n>{r['records']}</td></tr>" for r in d["revisions"]]
    parts.append("</table></body></html>\n")
    return "".join(parts)
