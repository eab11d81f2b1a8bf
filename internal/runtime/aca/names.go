//go:build linux && !agentonly

package aca

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/devgpu/devgpu/internal/runtime"
)

// The tags on every job the runtime creates. Installation and backend
// scope List, Stop and Connect: a job without both is never touched.
const (
	tagInstallation = "devgpu-installation"
	tagBackend      = "devgpu-backend"
	tagSession      = "devgpu-session"
	tagUser         = "devgpu-user"
	tagProject      = "devgpu-project"
)

// Where things are inside a session's container.
const (
	agentPath     = "/devgpu-agent"   // agentimage.AgentPath, the layer Start appends
	secretDir     = "/var/run/devgpu" // the Secret volume
	containerName = "session"
	volumeSecret  = "devgpu-secret"
)

// The job's secrets, which are also the file names under secretDir. Secret
// names take lower-case letters, digits, '-' and '.' (the Container Apps
// secret name rule, as `az containerapp job secret set` enforces it).
const (
	secretAgent = runtime.AgentSecretFile
	secretLink  = runtime.AgentCredentialFile
	secretCA    = runtime.AgentCAFile
)

// maxJobName is the longest Container Apps job name: 2 to 32 lower-case
// letters, digits and '-', starting with a letter and ending with a letter
// or digit. The same rule as container app names
// (https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules#microsoftapp:
// containerApps and jobs, "2-32, lowercase letters, numbers, and hyphens;
// start with letter and end with alphanumeric"). Not confirmed against a
// stored copy of that page: see the package's report.
const maxJobName = 32

// jobName is the name of the session's job: "dg-" and 24 hex digits of a
// hash of the installation, backend and session id. Session ids can be
// longer than a job name may be, so the id itself lives in the
// devgpu-session tag; the installation and backend in the hash keep two
// installations sharing a resource group from ever naming the same job.
func (c *checked) jobName(sessionID string) string {
	sum := sha256.Sum256([]byte(c.Installation + "\x00" + c.Backend + "\x00" + sessionID))
	return "dg-" + hex.EncodeToString(sum[:12])
}

// validJobName reports whether s keeps the job name rule.
func validJobName(s string) bool {
	if len(s) < 2 || len(s) > maxJobName {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' || c == '-':
			if i == 0 || (c == '-' && i == len(s)-1) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// tags are the tags of a session's job.
func (c *checked) tags(sessionID, user, project string) map[string]*string {
	s := func(v string) *string { return &v }
	return map[string]*string{
		tagInstallation: s(c.Installation),
		tagBackend:      s(c.Backend),
		tagSession:      s(sessionID),
		tagUser:         s(user),
		tagProject:      s(project),
	}
}

// owned reports whether a job's tags say this runtime made it.
func (c *checked) owned(tags map[string]*string) bool {
	return tag(tags, tagInstallation) == c.Installation && tag(tags, tagBackend) == c.Backend
}

// tag is a tag's value, "" when absent.
func tag(tags map[string]*string, key string) string {
	if v := tags[key]; v != nil {
		return *v
	}
	return ""
}
