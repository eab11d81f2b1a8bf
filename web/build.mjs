// Builds the console into ../internal/web/dist, which is committed so that
// `go build` needs no Node. SOURCES.sha256 there records the hash of every
// source it was built from; internal/web's test recomputes it and fails
// when the sources changed without a rebuild (`make test` runs it).
//
//   npm run build           type-check (tsc), then build: use this one;
//                           esbuild alone (node build.mjs) checks no types
//   npm run check           exit 1 when dist/ is stale (node build.mjs --check)
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync, mkdirSync, rmSync, copyFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const out = join(here, "../internal/web/dist");

// The same list internal/web's sourcesHash walks: keep the two in step.
function sourceFiles() {
  const files = ["build.mjs", "index.html", "package.json", "package-lock.json", "tsconfig.json"];
  const walk = (dir) => {
    for (const e of readdirSync(join(here, dir), { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk("src");
  return files.sort();
}

// sha256 over "path\0sha256(content)\n" per file, in sorted order.
function sourcesHash() {
  const h = createHash("sha256");
  for (const f of sourceFiles()) {
    const c = createHash("sha256").update(readFileSync(join(here, f))).digest("hex");
    h.update(`${f.split("\\").join("/")}\0${c}\n`);
  }
  return h.digest("hex");
}

if (process.argv.includes("--check")) {
  let recorded = "";
  try { recorded = readFileSync(join(out, "SOURCES.sha256"), "utf8").trim(); } catch {}
  if (recorded !== sourcesHash()) {
    console.error("internal/web/dist is stale against web/: run `npm run build` in web/ and commit the result");
    process.exit(1);
  }
  process.exit(0);
}

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });
await build({
  entryPoints: [join(here, "src/main.tsx")],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outfile: join(out, "assets/app.js"),
  loader: { ".css": "css" },
  legalComments: "linked",
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
writeFileSync(join(out, "SOURCES.sha256"), sourcesHash() + "\n");
console.log(`built ${relative(process.cwd(), out)}`);
