// The audit log (#/admin/audit): who changed what and when, filtered by
// who (actor), project, kind (action: exact, or every action under a
// prefix ending with ".") and time. Organisation admins read it all;
// a project's admins read their project's (and must name it: the server
// says so). The filters live in the address, so a link shows the same.
import { useId, useState } from "preact/hooks";
import { navigate } from "../router";
import type { PageProps } from "../routes";
import type { AuditEvent } from "../types";
import { ErrorText } from "../components/messages";
import { Field } from "../components/Field";
import { Table } from "../components/Table";
import { useApi } from "../components/useApi";
import { time } from "../components/format";

const SHOWN = 500;

// Kinds offered as suggestions; any action name or prefix can be typed.
const KINDS = [
  "project.", "project.create", "project.update", "project.delete", "org.policy",
  "member.", "member.set", "member.remove", "session.", "session.start", "session.end",
  "token.", "user.", "auth.", "access.cut", "budget.threshold", "image.", "pool.set",
];

interface Filters { actor: string; project: string; action: string; since: string; until: string }

// toRFC3339 reads a datetime-local value ("2026-11-26T09:00") as UTC.
function toRFC3339(local: string): string {
  return local ? `${local.length === 16 ? local + ":00" : local}Z` : "";
}

export function AuditPage({ me, query }: PageProps) {
  // A project admin must name a project: start with the first they run.
  const mine = (me.projects || []).find((p) => p.role === "admin")?.name || "";
  const f: Filters = {
    actor: query.get("actor") || "", project: query.get("project") ?? (me.org_admin ? "" : mine),
    action: query.get("action") || "", since: query.get("since") || "", until: query.get("until") || "",
  };
  const q = new URLSearchParams();
  if (f.actor) q.set("actor", f.actor);
  if (f.project) q.set("project", f.project);
  if (f.action) q.set("action", f.action);
  if (f.since) q.set("since", toRFC3339(f.since));
  if (f.until) q.set("until", toRFC3339(f.until));
  const events = useApi<AuditEvent[]>(`/api/v1/audit?${q}`);
  const newest = (events.data || []).slice().reverse();
  return (
    <>
      <h1>Audit log</h1>
      <FilterForm key={JSON.stringify(f)} f={f} />
      <ErrorText error={events.error} />
      {events.data && (
        <>
          {newest.length > SHOWN && <p class="muted">Showing the newest {SHOWN} of {newest.length} events; narrow the filters to see older ones.</p>}
          <Table caption={`Audit events, newest first (${newest.length})`} head={["Time (UTC)", "Who", "Action", "Project", "Target", "Change"]} empty="No events match these filters." class="audit">
            {newest.slice(0, SHOWN).map((e) => (
              <tr data-audit={e.id}>
                <td class="nowrap">{time(e.at)}</td>
                <td>{e.actor}</td>
                <td><code>{e.action}</code></td>
                <td>{e.project || ""}</td>
                <td>{e.target || ""}</td>
                <td>{(e.before != null || e.after != null) && (
                  <details>
                    <summary>Before and after</summary>
                    <p class="label">Before</p>
                    <pre>{e.before == null ? "(nothing)" : JSON.stringify(e.before, null, 2)}</pre>
                    <p class="label">After</p>
                    <pre>{e.after == null ? "(nothing)" : JSON.stringify(e.after, null, 2)}</pre>
                  </details>
                )}</td>
              </tr>
            ))}
          </Table>
        </>
      )}
    </>
  );
}

function FilterForm({ f }: { f: Filters }) {
  const [v, setV] = useState(f);
  const id = useId();
  const set = (k: keyof Filters) => (e: Event) => setV({ ...v, [k]: (e.currentTarget as HTMLInputElement).value });
  const apply = (e: Event) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, x] of Object.entries(v)) if (x.trim()) q.set(k, x.trim());
    // An empty project is kept, so that an org admin can clear it.
    if (!v.project.trim()) q.set("project", "");
    navigate(`/admin/audit?${q}`);
  };
  return (
    <form class="inline filters" onSubmit={apply} aria-label="Filters">
      <Field id={id + "-a"} label="Who"><input id={id + "-a"} type="text" value={v.actor} onInput={set("actor")} placeholder="any user" spellcheck={false} /></Field>
      <Field id={id + "-p"} label="Project"><input id={id + "-p"} type="text" value={v.project} onInput={set("project")} placeholder="any project" spellcheck={false} /></Field>
      <Field id={id + "-k"} label="Kind">
        <input id={id + "-k"} type="text" list={id + "-kinds"} value={v.action} onInput={set("action")} placeholder="any, or e.g. session." aria-describedby={id + "-k-hint"} spellcheck={false} />
        <datalist id={id + "-kinds"}>{KINDS.map((k) => <option value={k} />)}</datalist>
      </Field>
      <Field id={id + "-s"} label="From (UTC)"><input id={id + "-s"} type="datetime-local" value={v.since} onInput={set("since")} /></Field>
      <Field id={id + "-u"} label="To (UTC)"><input id={id + "-u"} type="datetime-local" value={v.until} onInput={set("until")} /></Field>
      <button type="submit" class="primary">Apply filters</button>
      <p class="hint" id={id + "-k-hint"}>Kind is an action such as project.update, or a prefix ending with a dot, such as session., for all of its kind.</p>
    </form>
  );
}
