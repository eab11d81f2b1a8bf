// Package agent is the in-session SSH server, `devgpu agent`. It runs inside
// every session (a process group, a container, a Pod) and implements once,
// for every runtime, what a user does in a session: PTY shells, exec with
// exit status, env, window changes, signals, the "sftp" subsystem (the
// session's filesystem as its processes see it) and "direct-tcpip" port
// forwarding (dialed from inside the session).
//
// The agent listens on a private unix socket. Every connection must start
// with the control plane's preamble (WritePreamble) carrying the session
// secret; SSH user authentication inside it is then "none", because the
// tunnel that reaches the socket is already authenticated and authorised.
//
// The control plane also keeps a connection of its own (DialControl, with
// a preamble of its own, since a user's tunnel carries the same secret), which
// asks for the time of the last user activity, for idle timeouts, shows
// notices on the session's terminals, to warn users before they happen,
// and runs a detached run's command as the session's job, whose output the
// agent holds until the control plane has collected it (job.go).
package agent
