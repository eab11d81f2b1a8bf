//go:build linux && !agentonly

package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/devgpu/devgpu/internal/runtime"
)

// The labels on everything the runtime creates. Installation and backend
// scope List, Stop and the informers: nothing without both is ever touched.
const (
	labelInstallation = "devgpu.dev/installation"
	labelBackend      = "devgpu.dev/backend"
	labelSession      = "devgpu.dev/session"
	labelUser         = "devgpu.dev/user"
	labelProject      = "devgpu.dev/project"
	// annotationSession holds the session id verbatim (the label is
	// label-safe, which an id need not be).
	annotationSession = "devgpu.dev/session-id"
)

// Node labels the runtime reads.
const (
	labelGPUProduct = "nvidia.com/gpu.product" // GPU Feature Discovery
	labelRegion     = "topology.kubernetes.io/region"
	// resourceGPU is the extended resource NVIDIA's device plugin (and the
	// test cluster's simulated one) advertises.
	resourceGPU = "nvidia.com/gpu"
)

// Where things are inside a session's Pod.
const (
	agentInImage   = "/devgpu-agent"            // the agent in Config.AgentImage
	agentDir       = "/devgpu"                  // the emptyDir the init container copies it into
	agentPath      = agentDir + "/devgpu-agent" // the copy the session container runs
	secretDir      = "/var/run/devgpu"          // the session's Secret, mounted read-only
	workspaceMount = "/workspace"               // as in the oci runtime
	containerName  = "session"
	initName       = "install-agent"
	volumeAgent    = "devgpu-agent"
	volumeSecret   = "devgpu-secret"
	volumeWork     = "workspace"
	// secretFileMode: only the session's root reads its credentials.
	secretFileMode = int32(0o400)
)

// The keys of a session's Secret, which are also the file names under
// secretDir.
const (
	secretAgentKey = runtime.AgentSecretFile
	secretLinkKey  = runtime.AgentCredentialFile
	secretCAKey    = runtime.AgentCAFile
)

// podName is the name of the session's Pod, Secret and NetworkPolicy.
func podName(sessionID string) string { return "devgpu-" + sessionID }

// maxLabel is the longest label value (and DNS label) Kubernetes takes.
const maxLabel = 63

// labelValue makes s a valid label value: itself when it is one, else its
// letters, digits, '-', '_' and '.' (shortened, trimmed to start and end
// alphanumeric) and a hash of s, so that different values stay different.
func labelValue(s string) string {
	if validLabelValue(s) {
		return s
	}
	return safeName(s, func(c rune) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
	})
}

// dnsLabel makes s a valid DNS label (lower-case letters, digits, '-'),
// the same way as labelValue.
func dnsLabel(s string) string {
	if validDNSLabel(s) {
		return s
	}
	return safeName(strings.ToLower(s), func(c rune) bool {
		return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	})
}

// safeName keeps what ok allows of s, at most 50 characters, and appends
// a dash and 12 hex digits of s's hash: at most 63 in all.
func safeName(s string, ok func(rune) bool) string {
	var b strings.Builder
	for _, c := range s {
		if ok(c) {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	kept := b.String()
	if len(kept) > 50 {
		kept = kept[:50]
	}
	kept = strings.TrimFunc(kept, func(c rune) bool { return !isAlnum(c) })
	sum := sha256.Sum256([]byte(s))
	h := hex.EncodeToString(sum[:6])
	if kept == "" {
		return h
	}
	return kept + "-" + h
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func validLabelValue(s string) bool {
	if s == "" || len(s) > maxLabel {
		return false
	}
	for i, c := range s {
		if isAlnum(c) {
			continue
		}
		if i == 0 || i == len(s)-1 || !(c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func validDNSLabel(s string) bool {
	if s == "" || len(s) > maxLabel {
		return false
	}
	for i, c := range s {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			continue
		}
		if c != '-' || i == 0 || i == len(s)-1 {
			return false
		}
	}
	return true
}

// workspaceClaimName is the PersistentVolumeClaim of a user's workspace in
// a project: devgpu-ws-<project>-<user> when that is a DNS label and reads
// one way only (a project without '-'), else a readable prefix and a hash
// of the pair, so that two pairs never share a claim.
func workspaceClaimName(project, user string) string {
	name := "devgpu-ws-" + project + "-" + user
	if validDNSLabel(name) && !strings.Contains(project, "-") {
		return name
	}
	return "devgpu-ws-" + hashedPair(project, user)
}

// hashedPair names a project and user pair within a DNS label's length:
// a readable prefix and a hash of both.
func hashedPair(project, user string) string {
	sum := sha256.Sum256([]byte(project + "\x00" + user))
	h := hex.EncodeToString(sum[:6])
	readable := strings.Map(func(c rune) rune {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' {
			return c
		}
		return '-'
	}, strings.ToLower(project+"-"+user))
	if max := maxLabel - len("devgpu-ws-") - 1 - len(h); len(readable) > max {
		readable = readable[:max]
	}
	readable = strings.Trim(readable, "-")
	if readable == "" {
		return h
	}
	return readable + "-" + h
}

// selector is the label selector of everything this runtime owns.
func (r *Runtime) selector() labels.Selector {
	return labels.SelectorFromSet(labels.Set{
		labelInstallation: r.cfg.Installation,
		labelBackend:      r.cfg.Backend,
	})
}

// objectLabels are the labels of a session's Pod, Secret and
// NetworkPolicy.
func (r *Runtime) objectLabels(sessionID, user, project string) map[string]string {
	return map[string]string{
		labelInstallation: r.cfg.Installation,
		labelBackend:      r.cfg.Backend,
		labelSession:      labelValue(sessionID),
		labelUser:         labelValue(user),
		labelProject:      labelValue(project),
	}
}

// owned reports whether an object's labels say this runtime made it.
func (r *Runtime) owned(l map[string]string) bool {
	return l[labelInstallation] == r.cfg.Installation && l[labelBackend] == r.cfg.Backend
}
