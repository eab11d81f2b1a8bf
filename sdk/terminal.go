package sdk

// The web console's terminal: GET /api/v1/sessions/{id}/terminal upgrades
// to a WebSocket on which the server is the SSH client of the session's
// agent, on the browser's behalf, so the agent speaks nothing new. The
// connection counts as one attachment, as a `devgpu shell` does.
//
// Query parameters: cols and rows, the terminal's size (default 80x24);
// resume and offset, to take back a kept shell after a dropped connection
// (TerminalMessage "ready" gave the token; offset counts the output bytes
// the browser has shown).
//
// Binary messages carry the terminal's bytes both ways. Text messages are
// JSON TerminalMessages, at most 4 KiB (a larger one closes the WebSocket
// with 1008, policy violation); one the server does not understand (bad
// JSON, an unknown type) is ignored.
//
// How the WebSocket ends decides what happens to the session, as for a
// `devgpu shell`: the shell exiting (TerminalExit), TerminalLeave, and a
// close frame with 1001, going away (what a browser sends when its tab
// closes or navigates away), count as the terminal closed, and the
// session ends (reason closed) when it was its last shell. Any other end
// (another close code, a network drop, unanswered pings) leaves the
// session to its detach grace, and the agent keeps the shell for a
// resume. The server closes with 1000 after an exit or a leave; 1011,
// internal error, when the agent's connection ended without the shell
// exiting or the shell could not start; 1001 when it shuts down or cut
// the terminal (the session ended, or access to it was removed); and
// TerminalCloseGone or TerminalCloseTakenOver, below. Each reason is a
// sentence to show.
//
// Refusals. A request the server refuses before it knows that a WebSocket
// is asked for (no credential 401, another origin 403, a session that is
// not the caller's 404, not running 409, a bad query 400) is an HTTP
// answer with problem details; so is 426 for a request without Upgrade.
// A browser cannot read the HTTP answer to its WebSocket, so a page whose
// WebSocket failed before it opened fetches the same URL without Upgrade:
// any answer but 426 is the refusal, and its detail the sentence. Once the
// request is known to ask for a WebSocket, a refusal (the caller's shells
// at their cap 429, the agent unreachable 502, the server shutting down
// 503, the session stopped running meanwhile 409...) accepts the WebSocket
// and closes it at once with TerminalCloseRefused plus the HTTP status
// (4429, 4502, 4503, 4409...), the reason the sentence (at most 123 bytes,
// still a whole sentence). Every close code from 4000 on means the same
// request will not do better at once: show its reason. 45xx are the
// server's or the agent's trouble and may pass (a new attempt later can
// succeed); 44xx need the user, or a new terminal.
//
// Keepalive. Browsers send no WebSocket pings, so the page could not tell
// a connection that died silently (a NAT that forgot it, a laptop that
// slept) from a quiet shell. The server sends TerminalKeepalive every
// KeepaliveMS milliseconds (TerminalReady says how many); a page that has
// received nothing (no output, no message) for about 2.5 intervals counts
// the connection lost, closes it and resumes as after a drop.
const (
	// From the browser.
	TerminalResize = "resize" // Cols, Rows
	// TerminalLeave: the user closed the terminal (the tab closed, or they
	// ended it): the server hangs up the shell (SIGHUP, as a terminal
	// that closes does, so that what ran in it stops rather than goes on
	// counting as activity), the attachment counts as closed, and the
	// session ends when it was its last. A close frame with 1001 does the
	// same. A WebSocket that ends without either (a network drop) leaves
	// the shell running and the session to its detach grace.
	TerminalLeave = "leave"

	// From the server.
	// TerminalReady: the shell runs. Token names it for a resume;
	// InputReceived (on a resume) counts the input bytes the shell has
	// had, so the browser sends again what followed; Oldest is the oldest
	// output offset the agent still had (bytes between the browser's
	// offset and it were lost); KeepaliveMS is the interval of
	// TerminalKeepalive.
	TerminalReady = "ready"
	// TerminalKeepalive: sent every KeepaliveMS milliseconds after
	// TerminalReady, whatever the shell does, so that the page sees the
	// connection is alive; it carries nothing else.
	TerminalKeepalive = "keepalive"
	// TerminalExit: the shell ended with Status or Signal; the server
	// closes the WebSocket after it.
	TerminalExit = "exit"
)

// WebSocket close codes of the terminal's own, after which reconnecting
// with the same token is no use. They follow the refusals' rule
// (TerminalCloseRefused plus an HTTP status), so a page that shows the
// reason of any code from 4000 on shows the right sentence: a 4409 may
// also be a session that stopped running as the terminal connected.
const (
	// TerminalCloseRefused plus an HTTP status is the close of a refusal
	// once the WebSocket was asked for (4429, 4502...; see Refusals
	// above).
	TerminalCloseRefused = 4000
	// TerminalCloseGone: the shell to resume is no longer the agent's (it
	// was detached longer than the agent keeps shells, or the agent
	// restarted): a new terminal is the only way on.
	TerminalCloseGone = 4404
	// TerminalCloseTakenOver: another terminal resumed this one's shell
	// (a second tab with the same token); the shell is that one's now.
	TerminalCloseTakenOver = 4409
)

// TerminalMessage is a text message of the terminal's WebSocket.
type TerminalMessage struct {
	Type          string `json:"type"`
	Cols          int    `json:"cols,omitempty"`
	Rows          int    `json:"rows,omitempty"`
	Token         string `json:"token,omitempty"`
	InputReceived uint64 `json:"input_received,omitempty"`
	Oldest        uint64 `json:"oldest,omitempty"`
	Status        *int   `json:"status,omitempty"`
	Signal        string `json:"signal,omitempty"`
	Message       string `json:"message,omitempty"`
	// KeepaliveMS, in TerminalReady: the interval of TerminalKeepalive.
	KeepaliveMS int64 `json:"keepalive_ms,omitempty"`
}
