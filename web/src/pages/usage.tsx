// Usage (#/usage, everyone: the API shows each caller what they may see,
// as `devgpu usage` does): GPU time and cost over a period grouped by day,
// project, user or GPU type, as a chart and the same numbers in a table;
// each project's month against its budget; and the report as CSV.
// Without a project the report is what the caller may see across
// projects (an org admin's everyone's, anyone else's their own); with
// one, a project admin sees everyone's use in it (project=, as `devgpu
// usage --project`), so the Project filter offers the projects the
// caller administers. The period, grouping and project live in the
// address (#/usage?from=&to=&by=&project=), so a reload or a shared link
// shows the same report.
import { useId, useState } from "preact/hooks";
import { navigate } from "../router";
import type { PageProps } from "../routes";
import type { ConsoleSession, Project, ProjectStanding, UsageReport, UsageRow } from "../types";
import { ErrorText } from "../components/messages";
import { Field } from "../components/Field";
import { Table } from "../components/Table";
import { BarChart } from "../components/BarChart";
import { BudgetBar } from "../components/BudgetBar";
import { useApi } from "../components/useApi";
import { hours, isoDate, money } from "../components/format";
import { amountIn, percent, spend } from "../components/budget";

const GROUPS: Record<string, string> = { day: "Day", project: "Project", user: "User", "gpu-type": "GPU type" };
const DAY = 86400000;

// Period is a report's period, grouping and project ("": every project
// the caller may see).
interface Period { from: string; to: string; by: string; project: string }

// period reads the report's period from the address: from and to are
// whole days (UTC), to included; this month so far by default.
function period(q: URLSearchParams): Period {
  const now = new Date();
  const first = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  const by = q.get("by") || "day";
  return { from: q.get("from") || isoDate(first), to: q.get("to") || isoDate(now), by: by in GROUPS ? by : "day", project: q.get("project") || "" };
}

// reportQuery is the API query for a period: since the start of from,
// until the end of to (or now, while to is today or later).
function reportQuery(p: Period): string {
  const q = new URLSearchParams({ by: p.by, since: `${p.from}T00:00:00Z` });
  const end = Date.parse(`${p.to}T00:00:00Z`) + DAY;
  if (end < Date.now()) q.set("until", new Date(end).toISOString().replace(".000Z", "Z"));
  if (p.project) q.set("project", p.project);
  return q.toString();
}

// useAdministered lists the projects whose usage the caller sees whole:
// every project for an org admin, else those they administer.
function useAdministered(me: ConsoleSession): string[] {
  const all = useApi<Project[]>(me.org_admin ? "/api/v1/projects" : null);
  if (me.org_admin) return (all.data || []).map((p) => p.name).sort();
  return (me.projects || []).filter((p) => p.role === "admin").map((p) => p.name).sort();
}

export function UsagePage({ me, query }: PageProps) {
  const p = period(query);
  const valid = /^\d{4}-\d{2}-\d{2}$/.test(p.from) && /^\d{4}-\d{2}-\d{2}$/.test(p.to) && p.from <= p.to;
  const q = reportQuery(p);
  const report = useApi<UsageReport>(valid ? `/api/v1/usage?${q}` : null);
  const standing = useApi<ProjectStanding[]>("/api/v1/standing");
  const administered = useAdministered(me);
  // A project in the address that is not in the list (a shared link)
  // is still offered, so that the form shows what the report is.
  const projects = p.project && !administered.includes(p.project) ? [...administered, p.project] : administered;
  const [measure, setMeasure] = useState<"hours" | "cost">("hours");
  const id = useId();
  return (
    <>
      <h1>Usage and cost</h1>
      <PeriodForm key={`${p.from} ${p.to} ${p.by} ${p.project}`} p={p} projects={projects} />
      {!valid && <p class="error" role="alert">The period's start must be a date on or before its end, such as from 2026-11-01 to 2026-11-30.</p>}
      <ErrorText error={report.error} />
      {report.data && (
        <section aria-labelledby={id + "-h"}>
          <h2 id={id + "-h"}>GPU use {p.project ? `in project ${p.project} ` : ""}by {GROUPS[p.by].toLowerCase()}, {p.from} to {p.to} (UTC)</h2>
          <div class="bar">
            <Field id={id + "-m"} label="Chart">
              <select id={id + "-m"} value={measure} onChange={(e) => setMeasure(e.currentTarget.value as "hours" | "cost")}>
                <option value="hours">GPU-hours</option>
                <option value="cost">Cost</option>
              </select>
            </Field>
            <a class="button" href={`/api/v1/usage?${q}&format=csv`} download>Download CSV</a>
          </div>
          <Chart report={report.data} measure={measure} p={p} />
          <Table caption={`Usage by ${GROUPS[p.by].toLowerCase()}`} head={[GROUPS[p.by], "GPU-hours", "Cost"]} empty="No GPU use in this period.">
            {report.data.rows.map((r) => (
              <tr><th scope="row">{r.key}</th><td class="num">{hours(r.gpu_hours)}</td><td class="num">{money(r.cost, report.data!.currency)}</td></tr>
            ))}
            {report.data.rows.length > 0 && (
              <tr class="total"><th scope="row">Total</th><td class="num">{hours(report.data.total.gpu_hours)}</td><td class="num">{money(report.data.total.cost, report.data.currency)}</td></tr>
            )}
          </Table>
        </section>
      )}
      <Budgets standing={standing.data} error={standing.error} />
    </>
  );
}

function PeriodForm({ p, projects }: { p: Period; projects: string[] }) {
  const [from, setFrom] = useState(p.from);
  const [to, setTo] = useState(p.to);
  const [by, setBy] = useState(p.by);
  const [project, setProject] = useState(p.project);
  const id = useId();
  const show = (e: Event) => {
    e.preventDefault();
    const q = new URLSearchParams({ from, to, by });
    if (project) q.set("project", project);
    navigate(`/usage?${q}`);
  };
  return (
    <form class="inline filters" onSubmit={show} aria-label="Report">
      <Field id={id + "-f"} label="From (UTC)"><input id={id + "-f"} type="date" value={from} onInput={(e) => setFrom(e.currentTarget.value)} required /></Field>
      <Field id={id + "-t"} label="To (UTC, included)"><input id={id + "-t"} type="date" value={to} onInput={(e) => setTo(e.currentTarget.value)} required /></Field>
      <Field id={id + "-b"} label="Group by">
        <select id={id + "-b"} value={by} onChange={(e) => setBy(e.currentTarget.value)}>
          {Object.entries(GROUPS).map(([k, v]) => <option value={k}>{v}</option>)}
        </select>
      </Field>
      {projects.length > 0 && (
        <Field id={id + "-p"} label="Project">
          <select id={id + "-p"} value={project} onChange={(e) => setProject(e.currentTarget.value)}>
            <option value="">All I may see</option>
            {projects.map((n) => <option value={n}>{n}</option>)}
          </select>
        </Field>
      )}
      <button type="submit" class="primary">Show</button>
    </form>
  );
}

function Chart({ report, measure, p }: { report: UsageReport; measure: "hours" | "cost"; p: Period }) {
  if (!report.rows.length) return null;
  const value = (r: UsageRow) => (measure === "hours" ? r.gpu_hours : r.cost);
  const text = (r: UsageRow) => (measure === "hours" ? hours(r.gpu_hours) : money(r.cost, report.currency));
  const top = report.rows.reduce((a, b) => (value(b) > value(a) ? b : a));
  const what = measure === "hours" ? "GPU-hours" : "Cost";
  const most = value(top) > 0 ? `; the most, ${text(top)}, for ${top.key}` : "";
  const summary = `${what}${p.project ? ` in project ${p.project}` : ""} by ${GROUPS[p.by].toLowerCase()} from ${p.from} to ${p.to}: ` +
    `${report.rows.length} ${report.rows.length === 1 ? "entry" : "entries"}, ${text(report.total)} in all${most}. The table below lists every value.`;
  return <BarChart summary={summary} bars={report.rows.map((r) => ({ label: r.key, value: value(r), text: text(r) }))} />;
}

function Budgets({ standing, error }: { standing: ProjectStanding[] | undefined; error: unknown }) {
  const id = useId();
  const budgeted = (standing || []).filter((s) => s.budget && s.budget.amount > 0);
  return (
    <section aria-labelledby={id + "-h"}>
      <h2 id={id + "-h"}>Budgets this month</h2>
      <ErrorText error={error} />
      {standing && !budgeted.length && <p class="muted">None of your projects has a budget.</p>}
      <ul class="budgets">
        {budgeted.map((s) => {
          const th = s.budget!.thresholds || [];
          const words = `${s.project}: ${spend(s)}` +
            (th.length ? `; warns at ${th.map((t) => `${t}%`).join(", ")}` : "") +
            `; at 100% ${s.budget!.action === "stop" ? "stops running sessions" : "refuses new sessions"}; ${amountIn(s, s.remaining)} left.`;
          return (
            <li data-budget={s.project}>
              <h3>{s.project}</h3>
              <BudgetBar spent={s.spent} amount={s.budget!.amount} thresholds={th} text={words} />
              {percent(s) >= 100 && <p class="error">Over budget.</p>}
            </li>
          );
        })}
      </ul>
    </section>
  );
}
