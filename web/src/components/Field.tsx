// Field is a labelled control: the label says what it is; hint (if any)
// has the id ID-hint, for the control's aria-describedby. Ids come from
// preact's useId.
import type { ComponentChildren } from "preact";

export function Field({ id, label, hint, children }: { id: string; label: string; hint?: string; children: ComponentChildren }) {
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {children}
      {hint && <span class="hint" id={id + "-hint"}>{hint}</span>}
    </div>
  );
}
