import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function ProjectsPage(_: PageProps) {
  return <h1>ProjectsPage</h1>;
}
