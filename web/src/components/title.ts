// The window's title names the page: "Project ml · devgpu".
export function setTitle(page: string) {
  document.title = page ? `${page} · devgpu` : "devgpu";
}
