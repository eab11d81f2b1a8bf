import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function LivePage(_: PageProps) {
  return <h1>LivePage</h1>;
}
