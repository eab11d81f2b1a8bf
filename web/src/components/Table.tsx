// Table is a data table with a caption and column headers; rows are the
// caller's <tr>s, so that they can carry data attributes.
import type { ComponentChildren } from "preact";

export function Table({ caption, head, children, empty, class: cls }: {
  caption: string; head: string[]; children: ComponentChildren; empty?: string; class?: string;
}) {
  const rows = Array.isArray(children) ? children.flat(2).filter(Boolean) : children ? [children] : [];
  return (
    <div class="table-wrap">
      <table class={cls}>
        <caption>{caption}</caption>
        <thead><tr>{head.map((h) => <th scope="col">{h}</th>)}</tr></thead>
        <tbody>
          {rows.length ? rows : <tr><td colSpan={head.length} class="muted">{empty || "Nothing to show."}</td></tr>}
        </tbody>
      </table>
    </div>
  );
}
