// Every page of the console. Admin pages show in the navigation only to
// those who administer something; the API decides what each caller sees.
import type { ComponentType } from "preact";
import type { ConsoleSession } from "./types";
import { HomePage } from "./pages/home";
import { TerminalPage } from "./pages/terminal";
import { UsagePage } from "./pages/usage";
import { OrgPage } from "./pages/org";
import { ProjectsPage } from "./pages/projects";
import { ProjectPage } from "./pages/project";
import { LivePage } from "./pages/live";
import { AuditPage } from "./pages/audit";

export interface PageProps { me: ConsoleSession; params: Record<string, string>; query: URLSearchParams }

export interface Route {
  pattern: string;
  page: ComponentType<PageProps>;
  // nav is the navigation entry's label; absent for pages reached by links.
  nav?: string;
  // admin: shown to org admins (org) or to admins of any project (project).
  admin?: "org" | "project";
  // title names the page in the window's title ("Project ml").
  title: (params: Record<string, string>) => string;
}

export const routes: Route[] = [
  { pattern: "/", page: HomePage, nav: "My GPUs", title: () => "My GPUs" },
  { pattern: "/terminal", page: TerminalPage, title: () => "GPU terminal" },
  { pattern: "/terminal/:session", page: TerminalPage, title: (p) => `Terminal ${p.session}` },
  { pattern: "/usage", page: UsagePage, nav: "Usage", title: () => "Usage" },
  { pattern: "/admin/sessions", page: LivePage, nav: "Live sessions", admin: "project", title: () => "Live sessions" },
  { pattern: "/admin/projects", page: ProjectsPage, nav: "Projects", admin: "project", title: () => "Projects" },
  { pattern: "/admin/projects/:name", page: ProjectPage, title: (p) => `Project ${p.name}` },
  { pattern: "/admin/org", page: OrgPage, nav: "Organisation", admin: "org", title: () => "Organisation" },
  { pattern: "/admin/audit", page: AuditPage, nav: "Audit log", admin: "project", title: () => "Audit log" },
];
