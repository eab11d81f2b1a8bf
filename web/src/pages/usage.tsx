import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function UsagePage(_: PageProps) {
  return <h1>UsagePage</h1>;
}
