// The terminal itself: xterm.js fitted to its element, drawn with WebGL
// where the browser has it (the DOM renderer otherwise, as in a headless
// browser), with a terminal's copy and paste keys.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { WebglAddon } from "@xterm/addon-webgl";
import "@xterm/xterm/css/xterm.css";
import "./terminal.css";

export interface Screen {
  term: Terminal;
  dispose(): void;
}

const isMac = /Mac|iPhone|iPad/.test(navigator.platform);

export interface ScreenOptions {
  // resize hears every new size (the element or the window changed).
  resize(cols: number, rows: number): void;
  // notice shows a sentence of ours, such as a clipboard the browser refused.
  notice(s: string): void;
  // escape moves the focus out of the terminal (Ctrl+Shift+E), which
  // otherwise keeps every key, Tab included.
  escape(): void;
  // describedBy: the id of the words that say the terminal's keys.
  describedBy?: string;
  screenReaderMode?: boolean;
}

// openScreen opens a terminal in el, labelled for assistive technology.
export function openScreen(el: HTMLElement, label: string, o: ScreenOptions): Screen {
  const term = new Terminal({
    cursorBlink: true,
    screenReaderMode: !!o.screenReaderMode,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Cascadia Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 10_000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  term.textarea?.setAttribute("aria-label", label);
  if (o.describedBy) term.textarea?.setAttribute("aria-describedby", o.describedBy);
  try {
    const gl = new WebglAddon();
    // A lost context falls back to the DOM renderer.
    gl.onContextLoss(() => gl.dispose());
    term.loadAddon(gl);
  } catch {
    // No WebGL: the DOM renderer draws it.
  }
  term.onResize(({ cols, rows }) => o.resize(cols, rows));
  term.attachCustomKeyEventHandler((ev) => escapeKey(ev, o.escape) && clipboardKeys(term, ev, o.notice));

  let frame = 0;
  const refit = () => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      if (el.clientWidth > 0 && el.clientHeight > 0) fit.fit();
    });
  };
  fit.fit();
  const observer = new ResizeObserver(refit);
  observer.observe(el);
  addEventListener("resize", refit);
  return {
    term,
    dispose() {
      observer.disconnect();
      removeEventListener("resize", refit);
      if (frame) cancelAnimationFrame(frame);
      term.dispose();
    },
  };
}

// escapeKey: Ctrl+Shift+E leaves the terminal, whose own keys include
// Tab and Escape; it reaches no shell. False keeps a key from xterm.
function escapeKey(ev: KeyboardEvent, escape: () => void): boolean {
  if (!ev.ctrlKey || !ev.shiftKey || ev.altKey || ev.metaKey || ev.key.toLowerCase() !== "e") return true;
  if (ev.type === "keydown") {
    ev.preventDefault();
    escape();
  }
  return false;
}

// clipboardKeys: Ctrl+Shift+C copies the selection and Ctrl+Shift+V
// pastes, as terminals do; Ctrl+V is the browser's own paste (xterm would
// send ^V), which xterm takes from the paste event. Every other key,
// Ctrl+C included, goes to the shell. False keeps a key from xterm.
function clipboardKeys(term: Terminal, ev: KeyboardEvent, notice: (s: string) => void): boolean {
  if (!ev.ctrlKey || ev.altKey || ev.metaKey) return true;
  const key = ev.key.toLowerCase();
  if (ev.shiftKey && key === "c") {
    if (ev.type === "keydown") {
      ev.preventDefault();
      const text = term.getSelection();
      if (text) {
        if (navigator.clipboard?.writeText) {
          navigator.clipboard.writeText(text).catch(() => notice("The browser did not let the page write to the clipboard; copy with the browser's menu instead."));
        } else {
          // Not a secure context: xterm's copy handler fills the event.
          document.execCommand("copy");
        }
      }
    }
    return false;
  }
  if (ev.shiftKey && key === "v") {
    if (ev.type === "keydown" && navigator.clipboard?.readText) {
      // The browser's own Ctrl+Shift+V would paste a second time.
      ev.preventDefault();
      navigator.clipboard.readText().then(
        (text) => term.paste(text),
        () => notice("The browser did not let the page read the clipboard; paste with Ctrl+V or the browser's menu instead."),
      );
    }
    // Without the clipboard API the browser's own paste goes to xterm.
    return false;
  }
  if (!ev.shiftKey && key === "v" && !isMac) return false;
  return true;
}
