import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function ProjectPage(_: PageProps) {
  return <h1>ProjectPage</h1>;
}
