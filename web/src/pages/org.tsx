import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function OrgPage(_: PageProps) {
  return <h1>OrgPage</h1>;
}
