// The organisation policy (#/admin/org, organisation admins): a default
// for every project setting, which settings projects may not change, the
// GPU quotas per type and region, the registries images may come from,
// and whether people must use single sign-on. One Save writes it all,
// with If-Match: a policy changed by someone else meanwhile is refused
// (412), not overwritten.
import { useEffect, useId, useState } from "preact/hooks";
import { apiFetch } from "../api";
import type { PageProps } from "../routes";
import type { OrgPolicy, ProjectSettings, Quota } from "../types";
import { ErrorText, Status } from "../components/messages";
import { Field } from "../components/Field";
import { Table } from "../components/Table";
import { SettingEditor } from "../components/SettingEditor";
import { BUILT_IN, describe, fromDraft, SETTINGS, toDraft, type Draft } from "../components/settings";

interface DefaultDraft { set: boolean; draft: Draft }
interface QuotaDraft { gpu_type: string; region: string; max: string }

// Form is the page's editable copy of the policy.
interface Form {
  defaults: Record<string, DefaultDraft>;
  locked: string[];
  quotas: QuotaDraft[];
  registries: string;
  hostAccess: string;
  requireSSO: boolean;
}

function toForm(p: OrgPolicy): Form {
  const defaults: Record<string, DefaultDraft> = {};
  for (const s of SETTINGS) {
    const v = p.defaults?.[s.key];
    defaults[s.key] = { set: v !== undefined, draft: toDraft(s.key, v !== undefined ? v : BUILT_IN[s.key]) };
  }
  return {
    defaults, locked: p.locked || [],
    quotas: (p.quotas || []).map((q) => ({ gpu_type: q.gpu_type, region: q.region || "", max: String(q.max) })),
    registries: (p.registries || []).join(", "), hostAccess: (p.allow_host_access || []).join(", "),
    requireSSO: Boolean(p.require_sso),
  };
}

const split = (s: string) => s.split(",").map((x) => x.trim()).filter(Boolean);

// fromForm is the policy to write: the one read, with what the page edits
// replaced (fields it does not know are kept as read).
function fromForm(base: OrgPolicy, f: Form): OrgPolicy {
  const defaults: ProjectSettings = { ...base.defaults };
  for (const s of SETTINGS) {
    const d = f.defaults[s.key];
    if (d.set) (defaults as Record<string, unknown>)[s.key] = fromDraft(s.key, d.draft);
    else delete defaults[s.key];
  }
  const quotas: Quota[] = f.quotas.map((q, i) => {
    const max = Number(q.max.trim());
    if (!q.gpu_type.trim()) throw new Error(`Quota ${i + 1} needs a GPU type, such as t4.`);
    if (q.max.trim() === "" || !Number.isInteger(max) || max < 0) throw new Error(`Quota ${i + 1}'s maximum must be a whole number of GPUs, 0 or more.`);
    const out: Quota = { gpu_type: q.gpu_type.trim(), max };
    if (q.region.trim()) out.region = q.region.trim();
    return out;
  });
  return {
    ...base, defaults, locked: f.locked, quotas,
    registries: split(f.registries), allow_host_access: split(f.hostAccess), require_sso: f.requireSSO,
  };
}

export function OrgPage(_: PageProps) {
  const [policy, setPolicy] = useState<OrgPolicy | null>(null);
  const [etag, setEtag] = useState("");
  const [form, setForm] = useState<Form | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [error, setError] = useState<unknown>(null);
  const [status, setStatus] = useState("");
  const [busy, setBusy] = useState(false);
  const id = useId();

  const take = async (resp: Response) => {
    const p = (await resp.json()) as OrgPolicy;
    setPolicy(p); setEtag(resp.headers.get("ETag") || ""); setForm(toForm(p));
  };
  const load = async () => {
    setLoadError(null);
    try { await take(await apiFetch("GET", "/api/v1/org/policy")); } catch (e) { setLoadError(e); }
  };
  useEffect(() => { load(); }, []);

  const save = async (e: Event) => {
    e.preventDefault();
    if (!policy || !form || busy) return;
    setError(null); setStatus("");
    let next: OrgPolicy;
    try { next = fromForm(policy, form); } catch (err) { setError(err); return; }
    setBusy(true);
    try {
      await take(await apiFetch("PUT", "/api/v1/org/policy", next, etag ? { "If-Match": etag } : {}));
      setStatus("Saved: the policy applies to every project now.");
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const reload = async () => { setError(null); setStatus(""); await load(); setStatus("Loaded the current policy; your unsaved changes were discarded."); };

  const edit = (patch: Partial<Form>) => setForm((f) => (f ? { ...f, ...patch } : f));
  const setDefault = (key: string, d: DefaultDraft) => edit({ defaults: { ...form!.defaults, [key]: d } });
  const lock = (key: string, on: boolean) => edit({ locked: on ? [...form!.locked.filter((k) => k !== key), key] : form!.locked.filter((k) => k !== key) });
  const setQuota = (i: number, patch: Partial<QuotaDraft>) => edit({ quotas: form!.quotas.map((q, j) => (j === i ? { ...q, ...patch } : q)) });

  return (
    <>
      <h1>Organisation policy</h1>
      <ErrorText error={loadError} />
      {form && policy && (
        <form onSubmit={save} class="policy">
          <p class="muted">Every project inherits these defaults unless it sets its own; a locked setting is the same for every project, and only an organisation admin can change it.</p>
          <Table caption="Defaults for every project" head={["Setting", "Organisation default", "New default", "Locked"]} class="settings">
            {SETTINGS.map((s) => {
              const d = form.defaults[s.key];
              const own = policy.defaults?.[s.key];
              return (
                <tr data-setting={s.key}>
                  <th scope="row">{s.label}<div class="muted key">{s.key}</div></th>
                  <td class="effective">{own !== undefined ? describe(s.key, own) : <span class="muted">none; built-in: {describe(s.key, BUILT_IN[s.key])}</span>}</td>
                  <td class="editor">
                    <SettingEditor setting={s.key} draft={d.draft} label={`Default for ${s.key}`} describedBy={`${id}-${s.key}-help`}
                      onChange={(draft) => setDefault(s.key, { set: true, draft })} />
                    <p class="hint" id={`${id}-${s.key}-help`}>{d.set ? s.help : "No organisation default: projects get the built-in value. Change it to set one."}</p>
                    {d.set && <button type="button" aria-label={`Use built-in for ${s.key}`} onClick={() => setDefault(s.key, { set: false, draft: toDraft(s.key, BUILT_IN[s.key]) })}>Use built-in</button>}
                  </td>
                  <td>
                    <input type="checkbox" id={`${id}-${s.key}-lock`} checked={form.locked.includes(s.key)} onChange={(e) => lock(s.key, e.currentTarget.checked)} />
                    <label for={`${id}-${s.key}-lock`}>Lock {s.label}</label>
                  </td>
                </tr>
              );
            })}
          </Table>

          <h2>GPU quotas</h2>
          <p class="muted">The most GPUs of a type (in a region, or in all of them) that the whole organisation holds at once. Lowering one holds new sessions back; it ends none.</p>
          <Table caption="Quotas per GPU type and region" head={["GPU type", "Region", "Max GPUs", "Actions"]} empty="No quotas: only the projects' caps and the free GPUs limit use.">
            {form.quotas.map((q, i) => (
              <tr data-quota={i}>
                <td><input type="text" aria-label={`GPU type of quota ${i + 1}`} value={q.gpu_type} onInput={(e) => setQuota(i, { gpu_type: e.currentTarget.value })} spellcheck={false} /></td>
                <td><input type="text" aria-label={`Region of quota ${i + 1}`} value={q.region} placeholder="any" onInput={(e) => setQuota(i, { region: e.currentTarget.value })} spellcheck={false} /></td>
                <td><input type="number" min={0} step={1} class="num" aria-label={`Max GPUs of quota ${i + 1}`} value={q.max} onInput={(e) => setQuota(i, { max: e.currentTarget.value })} /></td>
                <td><button type="button" aria-label={`Remove quota ${i + 1}`} onClick={() => edit({ quotas: form.quotas.filter((_, j) => j !== i) })}>Remove</button></td>
              </tr>
            ))}
          </Table>
          <button type="button" onClick={() => edit({ quotas: [...form.quotas, { gpu_type: "", region: "", max: "0" }] })}>Add quota</button>

          <h2>Images and access</h2>
          <Field id={id + "-reg"} label="Registries" hint="Where bring-your-own images may come from, comma-separated, such as ghcr.io, docker.io; catalog images need none.">
            <input id={id + "-reg"} type="text" value={form.registries} onInput={(e) => edit({ registries: e.currentTarget.value })} aria-describedby={id + "-reg-hint"} spellcheck={false} />
          </Field>
          <Field id={id + "-host"} label="Host access" hint="Services of the server's host that every session may reach: CIDRs or addresses with an optional :port, comma-separated; empty for none.">
            <input id={id + "-host"} type="text" value={form.hostAccess} onInput={(e) => edit({ hostAccess: e.currentTarget.value })} aria-describedby={id + "-host-hint"} spellcheck={false} />
          </Field>
          <div class="field">
            <input type="checkbox" id={id + "-sso"} checked={form.requireSSO} onChange={(e) => edit({ requireSSO: e.currentTarget.checked })} aria-describedby={id + "-sso-hint"} />
            <label for={id + "-sso"}>Require single sign-on</label>
            <span class="hint" id={id + "-sso-hint"}>People must log in through the identity provider; API tokens then work only for service accounts.</span>
          </div>

          <div class="bar">
            <button type="submit" class="primary">Save policy</button>
            <button type="button" onClick={reload}>Discard changes</button>
          </div>
          <ErrorText error={error} />
          <Status>{status}</Status>
        </form>
      )}
    </>
  );
}
