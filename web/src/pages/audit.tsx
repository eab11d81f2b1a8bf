import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function AuditPage(_: PageProps) {
  return <h1>AuditPage</h1>;
}
