// Dialog is a modal <dialog>: showModal makes the rest of the page inert
// (focus stays inside), Escape closes it, and the browser returns focus
// to what had it before. onClose runs when the user closes it (Escape);
// a close that open asked for is the caller's own, and not reported.
import type { ComponentChildren } from "preact";
import { useEffect, useId, useRef } from "preact/hooks";

export function Dialog({ open, title, onClose, children }: {
  open: boolean; title: string; onClose: () => void; children: ComponentChildren;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  // asked counts the closes that open asked for whose close event (a
  // task later) has not come yet: the dialog may be open again by then.
  const asked = useRef(0);
  const id = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) { asked.current++; d.close(); }
  }, [open]);
  const closed = () => {
    if (asked.current > 0) { asked.current--; return; }
    onClose();
  };
  return (
    <dialog ref={ref} aria-labelledby={id} onClose={closed}>
      <h2 id={id}>{title}</h2>
      {children}
    </dialog>
  );
}
