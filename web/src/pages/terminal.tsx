import type { PageProps } from "../routes";

// Placeholder until this page's part lands.
export function TerminalPage(_: PageProps) {
  return <h1>TerminalPage</h1>;
}
