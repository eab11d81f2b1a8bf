import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function HomePage(_: PageProps) {
  return <h1>HomePage</h1>;
}
