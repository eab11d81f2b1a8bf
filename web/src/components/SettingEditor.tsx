// SettingEditor edits one project setting's draft with the control its
// kind needs: a checkbox, a number, a select, text; budget, egress and
// workspace as a small group. label is its accessible name ("New value
// for max_gpus"); describedBy ties it to a reason or a hint.
import { useId } from "preact/hooks";
import { infoOf, type Draft } from "./settings";

export function SettingEditor({ setting, draft, onChange, label, disabled, describedBy }: {
  setting: string; draft: Draft; onChange: (d: Draft) => void;
  label: string; disabled?: boolean; describedBy?: string;
}) {
  const id = useId();
  const set = (patch: Partial<Draft>) => onChange({ ...draft, ...patch });
  const common = { disabled, "aria-describedby": describedBy };
  const text = (e: Event) => set({ text: (e.currentTarget as HTMLInputElement).value });
  switch (infoOf(setting).kind) {
    case "bool":
      return <input type="checkbox" aria-label={label} checked={draft.on} onChange={(e) => set({ on: e.currentTarget.checked })} {...common} />;
    case "count":
      return <input type="number" min={0} step={1} class="num" aria-label={label} value={draft.text} onInput={text} {...common} />;
    case "mode":
      return (
        <select aria-label={label} value={draft.text} onChange={(e) => set({ text: e.currentTarget.value })} {...common}>
          <option value="dedicated">dedicated</option>
          <option value="shared">shared</option>
          <option value="spillover">spillover</option>
        </select>
      );
    case "list": case "text": case "duration":
      return <input type="text" aria-label={label} value={draft.text} onInput={text} spellcheck={false} {...common} />;
    case "egress":
      return (
        <fieldset class="group" aria-label={label} {...common}>
          <label for={id + "m"}>Mode</label>
          <select id={id + "m"} value={draft.mode} onChange={(e) => set({ mode: e.currentTarget.value })}>
            <option value="all">all</option>
            <option value="none">none</option>
            <option value="allow-list">allow-list</option>
          </select>
          {draft.mode === "allow-list" && <>
            <label for={id + "a"}>Destinations</label>
            <input id={id + "a"} type="text" value={draft.text} onInput={text} spellcheck={false} placeholder="10.0.0.0/8, pypi.org:443" />
          </>}
        </fieldset>
      );
    case "budget":
      return (
        <fieldset class="group" aria-label={label} {...common}>
          <label for={id + "n"}>Amount</label>
          <input id={id + "n"} type="number" min={0} step="any" class="num" value={draft.text} onInput={text} />
          <label for={id + "u"}>Unit</label>
          <select id={id + "u"} value={draft.mode} onChange={(e) => set({ mode: e.currentTarget.value })}>
            <option value="currency">currency</option>
            <option value="gpu-hours">GPU-hours</option>
          </select>
          <label for={id + "t"}>Warn at (%)</label>
          <input id={id + "t"} type="text" class="short" value={draft.thresholds} placeholder="80, 100" onInput={(e) => set({ thresholds: e.currentTarget.value })} />
          <label for={id + "a"}>At 100%</label>
          <select id={id + "a"} value={draft.action} onChange={(e) => set({ action: e.currentTarget.value })}>
            <option value="refuse">refuse new sessions</option>
            <option value="stop">stop running sessions</option>
          </select>
        </fieldset>
      );
    case "workspace":
      return (
        <fieldset class="group" aria-label={label} {...common}>
          <input id={id + "e"} type="checkbox" checked={draft.on} onChange={(e) => set({ on: e.currentTarget.checked })} />
          <label for={id + "e"}>Enabled</label>
          <label for={id + "l"}>Limit (GB)</label>
          <input id={id + "l"} type="number" min={0} step="any" class="num" value={draft.text} placeholder="none" onInput={text} />
        </fieldset>
      );
  }
}
