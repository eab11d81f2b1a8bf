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
const (
	// From the browser.
	TerminalResize = "resize" // Cols, Rows
	// TerminalLeave: the user closed the terminal (the tab closed, or they
	// ended it): the attachment counts as closed, and the session ends
	// when it was its last. A WebSocket that ends without it (a network
	// drop) leaves the session to its detach grace.
	TerminalLeave = "leave"

	// From the server.
	// TerminalReady: the shell runs. Token names it for a resume;
	// InputReceived (on a resume) counts the input bytes the shell has
	// had, so the browser sends again what followed; Oldest is the oldest
	// output offset the agent still had (bytes between the browser's
	// offset and it were lost).
	TerminalReady = "ready"
	// TerminalExit: the shell ended with Status or Signal; the server
	// closes the WebSocket after it.
	TerminalExit = "exit"
)

// WebSocket close codes of the terminal's own, after which reconnecting
// with the same token is no use.
const (
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
}
