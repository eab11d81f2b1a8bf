package oci

import (
	"fmt"
	"os"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SeccompUnconfined, as Config.Seccomp, runs sessions without a seccomp
// filter.
const SeccompUnconfined = "unconfined"

// seccompProfile is the filter every session gets: Docker's default
// profile (github.com/moby/profiles/seccomp, the package Docker and
// containerd generate theirs from) unless the admin configured another.
// Without CAP_SYS_ADMIN, which sessions never have, the default refuses
// new user, mount and other namespaces (unshare, clone with CLONE_NEW*,
// setns), mount and the new mount API, keyctl, add_key and request_key,
// bpf, perf_event_open, io_uring, kernel modules, kexec and reboot, with
// EPERM (clone3 with ENOSYS, so that libcs fall back to clone).
type seccompProfile struct {
	custom     string // a profile in Docker's JSON format; "" is the default
	unconfined bool
}

// loadSeccomp resolves Config.Seccomp: "" is the default profile,
// SeccompUnconfined none, anything else the path of a profile in Docker's
// JSON format, which is checked now so that a bad file fails the start of
// the server rather than every session.
func loadSeccomp(setting string) (seccompProfile, error) {
	switch setting {
	case "":
		return seccompProfile{}, nil
	case SeccompUnconfined:
		return seccompProfile{unconfined: true}, nil
	}
	b, err := os.ReadFile(setting)
	if err != nil {
		return seccompProfile{}, fmt.Errorf("seccomp profile: %w; give the path of a profile in Docker's JSON format, %q, or nothing for the default", err, SeccompUnconfined)
	}
	p := seccompProfile{custom: string(b)}
	if _, err := p.filter(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}); err != nil {
		return seccompProfile{}, fmt.Errorf("seccomp profile %s: %w; it must be in Docker's JSON format", setting, err)
	}
	return p, nil
}

// filter is the runtime-spec form of the profile for a container spec:
// syscalls the profile allows only with a capability are allowed only if
// the spec's bounding set holds it. Nil means no filter.
func (p seccompProfile) filter(s *specs.Spec) (*specs.LinuxSeccomp, error) {
	switch {
	case p.unconfined:
		return nil, nil
	case p.custom != "":
		return seccomp.LoadProfile(p.custom, s)
	default:
		return seccomp.GetDefaultProfile(s)
	}
}
