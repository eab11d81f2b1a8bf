// The keystrokes typed into a shell, at absolute offsets from its first,
// the last INPUT_KEPT of them held: after a dropped connection the server
// says how many the shell had (TerminalMessage input_received), and what
// followed is sent again, as `devgpu shell` does (internal/cli/reconnect.go).

// INPUT_KEPT bounds the keystrokes kept for a resume (the CLI's inputKept).
export const INPUT_KEPT = 64 << 10;

export class InputLog {
  // buf[0:len] are the newest bytes; it holds up to twice INPUT_KEPT
  // between compactions, of which the last INPUT_KEPT count.
  private buf = new Uint8Array(2 * INPUT_KEPT);
  private len = 0;
  // end is the offset after the last byte typed.
  end = 0;

  append(p: Uint8Array) {
    if (p.length >= INPUT_KEPT) {
      this.buf.set(p.subarray(p.length - INPUT_KEPT));
      this.len = INPUT_KEPT;
    } else {
      if (this.len + p.length > this.buf.length) {
        const keep = Math.min(this.len, INPUT_KEPT - p.length);
        this.buf.copyWithin(0, this.len - keep, this.len);
        this.len = keep;
      }
      this.buf.set(p, this.len);
      this.len += p.length;
    }
    this.end += p.length;
  }

  // oldest is the offset of the oldest byte still kept.
  get oldest(): number { return this.end - Math.min(this.len, INPUT_KEPT); }

  // since returns the input from offset from on (from the oldest kept,
  // when from is older than that).
  since(from: number): Uint8Array {
    const oldest = this.oldest;
    from = Math.min(Math.max(from, oldest), this.end);
    return this.buf.slice(this.len - (this.end - from), this.len);
  }
}
