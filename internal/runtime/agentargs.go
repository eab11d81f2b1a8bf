package runtime

import "time"

// The files of a session's agent credentials, in the directory a
// container runtime mounts them at (kube's Secret, aca's Secret volume).
const (
	AgentSecretFile     = "agent-secret"
	AgentCredentialFile = "link-credential"
	AgentCAFile         = "link-ca"
)

// AgentArgs is the command line of an agent that links out to the control
// plane at linkURL: the agent's arguments after its path, reading its
// secret, its link credential and (when hasCA) the CA it trusts from
// files under secretDir, never from its arguments or environment.
func AgentArgs(sessionID, linkURL, secretDir string, idleExit time.Duration, hasCA bool) []string {
	args := []string{
		"agent",
		"--session", sessionID,
		"--link", linkURL,
		"--secret-file", secretDir + "/" + AgentSecretFile,
		"--link-credential-file", secretDir + "/" + AgentCredentialFile,
	}
	if hasCA {
		args = append(args, "--link-ca-file", secretDir+"/"+AgentCAFile)
	}
	return append(args, "--idle-exit", idleExit.String())
}
