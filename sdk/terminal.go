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
// JSON TerminalMessages.
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
