// A project's page (#/admin/projects/NAME): every setting with its
// effective value and where it comes from — the project's own, inherited
// from the organisation, the built-in default, or locked by the
// organisation — each saved or inherited on its own row; then members.
// The server decides who may change what: a refusal shows its sentence.
import { useEffect, useId, useState } from "preact/hooks";
import { api } from "../api";
import type { PageProps } from "../routes";
import type { Budget, Member, Project, ProjectSettings, ProjectUpdate, Setting } from "../types";
import { ErrorText, Status } from "../components/messages";
import { Table } from "../components/Table";
import { Field } from "../components/Field";
import { SettingEditor } from "../components/SettingEditor";
import { budgetFields, describe, fromDraft, infoOf, SETTINGS, toDraft, type Draft } from "../components/settings";
import { useApi } from "../components/useApi";

export function ProjectPage({ params }: PageProps) {
  const name = params.name;
  const path = `/api/v1/projects/${encodeURIComponent(name)}`;
  const project = useApi<Project>(path);
  return (
    <>
      <h1>Project {name}</h1>
      <p><a href="#/admin/projects">All projects</a></p>
      <ErrorText error={project.error} />
      {project.data && <SettingsTable key={name} project={project.data} path={path} onSaved={project.set} />}
      {project.data && <Members key={name} project={name} />}
    </>
  );
}

// keys orders the settings the server returned as policy.Names does; any
// the console does not know yet come last, shown as text.
function keys(effective: Record<string, Setting>): string[] {
  const known = SETTINGS.map((s) => s.key as string).filter((k) => k in effective);
  return known.concat(Object.keys(effective).filter((k) => !known.includes(k)).sort());
}

function SettingsTable({ project, path, onSaved }: { project: Project; path: string; onSaved: (p: Project) => void }) {
  return (
    <Table caption="Settings" head={["Setting", "Effective value", "Source", "New value", "Actions"]} class="settings">
      {keys(project.effective).map((k) => (
        <SettingRow key={k} setting={k} value={project.effective[k]} own={project.settings[k as keyof ProjectSettings]} path={path} onSaved={onSaved} />
      ))}
    </Table>
  );
}

function sourceText(s: Setting): string {
  if (s.locked) return "locked by the organisation";
  return s.source === "org" ? "inherited from the organisation" : s.source;
}

function SettingRow({ setting, value, own, path, onSaved }: {
  setting: string; value: Setting; own: unknown; path: string; onSaved: (p: Project) => void;
}) {
  const info = infoOf(setting);
  const [draft, setDraft] = useState<Draft>(() => toDraft(setting, value.value));
  const [stopRunning, setStopRunning] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [status, setStatus] = useState("");
  const id = useId();
  // A new effective value (saved here, or another row's save) resets the draft.
  const shown = JSON.stringify(value.value);
  useEffect(() => { setDraft(toDraft(setting, value.value)); }, [shown]);

  // Buttons stay enabled while a change is sent (disabling the focused
  // one would drop keyboard focus); busy ignores a second press.
  const send = async (u: ProjectUpdate, done: string) => {
    if (busy) return;
    setBusy(true); setError(null); setStatus("");
    try {
      const p = await api<Project>("PATCH", path, u);
      onSaved(p);
      setStatus(done);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const save = () => {
    let v: unknown;
    try { v = fromDraft(setting, draft); } catch (e) { setError(e); setStatus(""); return; }
    const u: ProjectUpdate = { settings: { [setting]: v } as ProjectSettings };
    if (setting === "budget") {
      const fields = budgetFields(value.value as Budget | undefined, v as Budget);
      if (own !== undefined && fields.length) u.budget_fields = fields;
    }
    if (setting === "gpu_enabled" && v === false && stopRunning) u.stop_running = true;
    send(u, "Saved.");
  };
  const inherit = () => send({ settings: {}, unset: [setting] }, "Now inherited.");

  const locked = Boolean(value.locked);
  const describedBy = [locked ? id + "-locked" : "", id + "-help"].filter(Boolean).join(" ");
  return (
    <tr data-setting={setting}>
      <th scope="row">{info.label}<div class="muted key">{setting}</div></th>
      <td class="effective">{describe(setting, value.value)}</td>
      <td class="source">
        {locked
          ? <span class="badge locked">locked by the organisation</span>
          : <span class={"badge " + value.source}>{sourceText(value)}</span>}
      </td>
      <td class="editor">
        <SettingEditor setting={setting} draft={draft} onChange={setDraft} label={`New value for ${setting}`} disabled={locked} describedBy={describedBy} />
        {setting === "gpu_enabled" && !draft.on && !locked && (
          <div class="sub">
            <input type="checkbox" id={id + "-stop"} checked={stopRunning} onChange={(e) => setStopRunning(e.currentTarget.checked)} />
            <label for={id + "-stop"}>Also stop running sessions</label>
          </div>
        )}
        {locked && <p class="reason" id={id + "-locked"}>The organisation policy fixes this setting for every project; an organisation admin can unlock it on the Organisation page.</p>}
        <p class="hint" id={id + "-help"}>{info.help}</p>
        <ErrorText error={error} />
        <Status>{status}</Status>
      </td>
      <td class="actions">
        <button type="button" class="primary" aria-label={`Save ${setting}`} disabled={locked} aria-describedby={locked ? id + "-locked" : undefined} onClick={save}>Save</button>
        <button type="button" aria-label={`Inherit ${setting}`} disabled={locked} aria-describedby={locked ? id + "-locked" : undefined} onClick={inherit}>Inherit</button>
      </td>
    </tr>
  );
}

function Members({ project }: { project: string }) {
  const path = `/api/v1/projects/${encodeURIComponent(project)}/members`;
  const members = useApi<Member[]>(path);
  const [user, setUser] = useState("");
  const [role, setRole] = useState("developer");
  const [error, setError] = useState<unknown>(null);
  const [status, setStatus] = useState("");
  const id = useId();
  const change = async (method: "PUT" | "DELETE", who: string, r: string | undefined, done: string) => {
    setError(null); setStatus("");
    try {
      await api(method, `${path}/${encodeURIComponent(who)}`, r ? { role: r } : undefined);
      await members.reload();
      setStatus(done);
      return true;
    } catch (e) {
      setError(e);
      return false;
    }
  };
  const add = async (e: Event) => {
    e.preventDefault();
    const who = user.trim();
    if (!who) { setError(new Error("Type the user's name to add them.")); setStatus(""); return; }
    if (await change("PUT", who, role, `${who} is now a ${role} of ${project}.`)) setUser("");
  };
  return (
    <section aria-labelledby={id + "-h"}>
      <h2 id={id + "-h"}>Members</h2>
      <ErrorText error={members.error || error} />
      <Status>{status}</Status>
      {members.data && (
        <Table caption={`Members of ${project}`} head={["User", "Role", "Source", "Actions"]} empty="No members yet.">
          {members.data.map((m) => <MemberRow key={m.user} m={m} change={change} project={project} />)}
        </Table>
      )}
      <form class="inline" onSubmit={add} aria-labelledby={id + "-add"}>
        <h3 id={id + "-add"}>Add a member</h3>
        <Field id={id + "-user"} label="User"><input id={id + "-user"} type="text" value={user} onInput={(e) => setUser(e.currentTarget.value)} autoComplete="off" /></Field>
        <Field id={id + "-role"} label="Role"><RoleSelect id={id + "-role"} value={role} onChange={setRole} /></Field>
        <button type="submit" class="primary">Add member</button>
      </form>
    </section>
  );
}

function RoleSelect({ id, value, onChange, label }: { id?: string; value: string; onChange: (v: string) => void; label?: string }) {
  return (
    <select id={id} aria-label={label} value={value} onChange={(e) => onChange(e.currentTarget.value)}>
      <option value="developer">developer</option>
      <option value="admin">admin</option>
    </select>
  );
}

// MemberRow changes a role only when "Save role" is pressed, so that
// moving through the choices with the keyboard changes nothing.
function MemberRow({ m, change, project }: {
  m: Member; project: string;
  change: (method: "PUT" | "DELETE", who: string, r: string | undefined, done: string) => Promise<boolean>;
}) {
  const [role, setRole] = useState(m.role);
  useEffect(() => setRole(m.role), [m.role]);
  return (
    <tr data-member={m.user}>
      <th scope="row">{m.user}</th>
      <td>
        <RoleSelect label={`Role of ${m.user}`} value={role} onChange={setRole} />{" "}
        <button type="button" aria-label={`Save role of ${m.user}`} onClick={() => change("PUT", m.user, role, `${m.user} is now a ${role} of ${project}.`)}>Save role</button>
      </td>
      <td>{m.source === "group" ? "from identity-provider group" : "added by hand"}</td>
      <td><button type="button" aria-label={`Remove ${m.user}`} onClick={() => change("DELETE", m.user, undefined, `${m.user} is no longer a member of ${project}.`)}>Remove</button></td>
    </tr>
  );
}
