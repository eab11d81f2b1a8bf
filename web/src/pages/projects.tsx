// Projects (#/admin/projects): every project the caller may see, with its
// GPUs in use against its cap and its month's spend against its budget
// (GET /api/v1/standing); organisation admins create projects here.
import { useId, useState } from "preact/hooks";
import { api } from "../api";
import { navigate } from "../router";
import type { PageProps } from "../routes";
import type { Project, ProjectStanding } from "../types";
import { ErrorText } from "../components/messages";
import { Field } from "../components/Field";
import { Table } from "../components/Table";
import { useApi } from "../components/useApi";
import { spend } from "../components/budget";

export function ProjectsPage({ me }: PageProps) {
  const projects = useApi<Project[]>("/api/v1/projects");
  const standing = useApi<ProjectStanding[]>("/api/v1/standing");
  const by = new Map((standing.data || []).map((s) => [s.project, s]));
  return (
    <>
      <h1>Projects</h1>
      <ErrorText error={projects.error} />
      <ErrorText error={standing.error} />
      {projects.data && (
        <Table caption="Projects and their use now" head={["Project", "GPUs enabled", "GPUs in use / cap", "Budget this month"]} empty="No projects yet.">
          {projects.data.map((p) => {
            const s = by.get(p.name);
            const enabled = s ? s.gpu_enabled : Boolean(p.effective.gpu_enabled?.value);
            return (
              <tr data-project={p.name}>
                <th scope="row"><a href={`#/admin/projects/${encodeURIComponent(p.name)}`}>{p.name}</a></th>
                <td>{enabled ? "yes" : "no"}</td>
                <td>{s ? `${s.gpus_in_use} / ${s.max_gpus || "no cap"}` : "unknown"}</td>
                <td>{s ? spend(s) : "unknown"}</td>
              </tr>
            );
          })}
        </Table>
      )}
      {me.org_admin && <CreateProject />}
    </>
  );
}

function CreateProject() {
  const [name, setName] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const id = useId();
  const submit = async (e: Event) => {
    e.preventDefault();
    const n = name.trim();
    if (busy) return;
    if (!n) { setError(new Error("Type a name for the new project, such as ml-research.")); return; }
    setBusy(true); setError(null);
    try {
      await api<Project>("POST", "/api/v1/projects", { name: n, settings: {} });
      navigate(`/admin/projects/${encodeURIComponent(n)}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section aria-labelledby={id + "-h"}>
      <h2 id={id + "-h"}>Create a project</h2>
      <form class="inline" onSubmit={submit}>
        <Field id={id + "-name"} label="Project name" hint="Lower-case letters, digits and dashes; its settings inherit the organisation's until changed.">
          <input id={id + "-name"} type="text" value={name} onInput={(e) => setName(e.currentTarget.value)} aria-describedby={id + "-name-hint"} autoComplete="off" spellcheck={false} />
        </Field>
        <button type="submit" class="primary">Create project</button>
      </form>
      <ErrorText error={error} />
    </section>
  );
}
