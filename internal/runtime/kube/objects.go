//go:build linux && !agentonly

package kube

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/sdk"
)

// sessionCapabilities are what a root development shell needs: Docker's
// default set without NET_RAW (raw sockets, ARP spoofing on the Pod
// network) and MKNOD (device nodes).
var sessionCapabilities = []corev1.Capability{
	"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "AUDIT_WRITE",
}

// terminationGrace is how long a stopped session's processes get to exit.
const terminationGrace = int64(2)

// securityContext is the session container's: no privilege escalation,
// only sessionCapabilities (none for the init container), the runtime's
// default seccomp profile.
func securityContext(add []corev1.Capability) *corev1.SecurityContext {
	no := false
	// Root in the container (not the host's with user_namespaces): the
	// agent must read its 0400 secret files whatever USER the image names,
	// and a session is a root shell on every runtime.
	root := int64(0)
	return &corev1.SecurityContext{
		RunAsUser:                &root,
		AllowPrivilegeEscalation: &no,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: add},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// secret holds what the session's agent must keep to itself: the secret
// its clients present, the credential it links with, and the CA it trusts
// for the link. It reaches the agent as read-only files, never in its
// environment or arguments, which anyone who may get the Pod can read.
func (r *Runtime) secret(spec runtime.Spec) *corev1.Secret {
	immutable := true
	data := map[string][]byte{
		secretAgentKey: []byte(spec.AgentSecret),
		secretLinkKey:  []byte(spec.LinkCredential),
	}
	if len(r.cfg.LinkCA) > 0 {
		data[secretCAKey] = r.cfg.LinkCA
	}
	return &corev1.Secret{
		ObjectMeta: r.meta(spec),
		Immutable:  &immutable,
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}
}

// meta is the name, namespace, labels and annotation of a session's
// objects.
func (r *Runtime) meta(spec runtime.Spec) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:        podName(spec.SessionID),
		Namespace:   r.cfg.Namespace,
		Labels:      r.objectLabels(spec.SessionID, spec.User, spec.Project),
		Annotations: map[string]string{annotationSession: spec.SessionID},
	}
}

// image is the session's image.
func (r *Runtime) image(spec runtime.Spec) string {
	if spec.Image != "" {
		return spec.Image
	}
	return r.cfg.DefaultImage
}

// agentArgs is the session container's command: the agent copied in by the
// init container, linking out to the control plane with the credentials
// in the Secret's files.
func (r *Runtime) agentArgs(spec runtime.Spec) []string {
	return append([]string{agentPath}, runtime.AgentArgs(spec.SessionID, r.cfg.LinkURL, secretDir, spec.IdleExit, len(r.cfg.LinkCA) > 0)...)
}

// env is the session's environment contract: devices nil, since the
// device plugin chooses them (it sets NVIDIA_VISIBLE_DEVICES; the agent
// sets CUDA_VISIBLE_DEVICES from what it sees), DEVGPU_NODE from the Pod's
// node, and the workspace as the oci runtime gives it.
func (r *Runtime) env(spec runtime.Spec, workspace bool) []corev1.EnvVar {
	vars := runtime.SessionEnv(spec, nil)
	delete(vars, "DEVGPU_WORKSPACE")
	delete(vars, "DEVGPU_WORKSPACE_READONLY")
	if workspace {
		vars["DEVGPU_WORKSPACE"] = workspaceMount
		if spec.WorkspaceReadOnly {
			vars["DEVGPU_WORKSPACE_READONLY"] = "1"
		}
	}
	delete(vars, "DEVGPU_NODE")
	if spec.GPU.Count == 0 {
		// A session without GPUs may land on a GPU node; where the NVIDIA
		// runtime is the default, an image saying NVIDIA_VISIBLE_DEVICES=all
		// would otherwise see every GPU there, other sessions' too.
		vars["NVIDIA_VISIBLE_DEVICES"] = "void"
	}
	env := make([]corev1.EnvVar, 0, len(vars)+1)
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		env = append(env, corev1.EnvVar{Name: k, Value: vars[k]})
	}
	return append(env, corev1.EnvVar{
		Name:      "DEVGPU_NODE",
		ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}},
	})
}

// pod is the session's Pod. claim is its workspace's claim ("" for none).
func (r *Runtime) pod(spec runtime.Spec, claim string) *corev1.Pod {
	no := false
	grace := terminationGrace
	typed := r.cfg.resources[spec.GPU.Type]
	resources := *typed.DeepCopy()
	if resources.Limits == nil {
		resources.Limits = corev1.ResourceList{}
	}
	if spec.GPU.Count > 0 {
		resources.Limits[resourceGPU] = *resource.NewQuantity(int64(spec.GPU.Count), resource.DecimalSI)
	}
	mode := secretFileMode
	volumes := []corev1.Volume{
		{Name: volumeAgent, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: volumeSecret, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: podName(spec.SessionID), DefaultMode: &mode,
		}}},
	}
	mounts := []corev1.VolumeMount{
		{Name: volumeAgent, MountPath: agentDir, ReadOnly: true},
		{Name: volumeSecret, MountPath: secretDir, ReadOnly: true},
	}
	if claim != "" {
		volumes = append(volumes, corev1.Volume{Name: volumeWork, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim, ReadOnly: spec.WorkspaceReadOnly},
		}})
		mounts = append(mounts, corev1.VolumeMount{Name: volumeWork, MountPath: workspaceMount, ReadOnly: spec.WorkspaceReadOnly})
	}
	var pullSecrets []corev1.LocalObjectReference
	for _, s := range r.cfg.ImagePullSecrets {
		pullSecrets = append(pullSecrets, corev1.LocalObjectReference{Name: s})
	}
	p := &corev1.Pod{
		ObjectMeta: r.meta(spec),
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			TerminationGracePeriodSeconds: &grace,
			NodeSelector:                  maps.Clone(r.cfg.NodeSelector),
			Affinity:                      r.affinity(spec.GPU),
			Tolerations:                   slices.Clone(r.cfg.Tolerations),
			ImagePullSecrets:              pullSecrets,
			SecurityContext: &corev1.PodSecurityContext{
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Volumes: volumes,
			InitContainers: []corev1.Container{{
				Name:            initName,
				Image:           r.cfg.AgentImage,
				Command:         []string{agentInImage, "agent", "install", agentPath},
				VolumeMounts:    []corev1.VolumeMount{{Name: volumeAgent, MountPath: agentDir}},
				SecurityContext: securityContext(nil),
			}},
			Containers: []corev1.Container{{
				Name:            containerName,
				Image:           r.image(spec),
				Command:         r.agentArgs(spec),
				Env:             r.env(spec, claim != ""),
				Resources:       resources,
				VolumeMounts:    mounts,
				SecurityContext: securityContext(sessionCapabilities),
			}},
		},
	}
	if r.cfg.RuntimeClassName != "" {
		rc := r.cfg.RuntimeClassName
		p.Spec.RuntimeClassName = &rc
	}
	if r.cfg.UserNamespaces {
		p.Spec.HostUsers = &no
	}
	return p
}

// affinity selects the nodes that hold the requested GPU type in the
// requested region. The terms are ORed: one per (product choice, region
// choice) pair.
//
// A type's nodes are those whose product label maps to it; for
// Config.DefaultGPUType also those whose product is missing or not mapped
// (NotIn matches a node without the label). A region's nodes are those
// labelled with it; for Config.Region also those without a region label.
func (r *Runtime) affinity(req runtime.GPURequest) *corev1.Affinity {
	var products [][]corev1.NodeSelectorRequirement
	if req.Count > 0 {
		if ps := r.cfg.products[req.Type]; len(ps) > 0 {
			products = append(products, []corev1.NodeSelectorRequirement{{Key: labelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: ps}})
		}
		if req.Type != "" && req.Type == r.cfg.DefaultGPUType {
			mapped := slices.Sorted(maps.Keys(r.cfg.GPUTypes))
			if len(mapped) == 0 {
				products = append(products, nil) // every GPU node is of the default type
			} else {
				products = append(products, []corev1.NodeSelectorRequirement{{Key: labelGPUProduct, Operator: corev1.NodeSelectorOpNotIn, Values: mapped}})
			}
		}
	}
	if len(products) == 0 {
		products = [][]corev1.NodeSelectorRequirement{nil}
	}
	regions := [][]corev1.NodeSelectorRequirement{nil}
	if req.Region != "" {
		regions = [][]corev1.NodeSelectorRequirement{{{Key: labelRegion, Operator: corev1.NodeSelectorOpIn, Values: []string{req.Region}}}}
		if req.Region == r.cfg.Region {
			regions = append(regions, []corev1.NodeSelectorRequirement{{Key: labelRegion, Operator: corev1.NodeSelectorOpDoesNotExist}})
		}
	}
	var terms []corev1.NodeSelectorTerm
	for _, p := range products {
		for _, g := range regions {
			if exprs := append(slices.Clone(p), g...); len(exprs) > 0 {
				terms = append(terms, corev1.NodeSelectorTerm{MatchExpressions: exprs})
			}
		}
	}
	if len(terms) == 0 {
		return nil
	}
	return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms},
	}}
}

// claim is the PersistentVolumeClaim of the user's workspace in the
// project. It outlives sessions, so it carries no session label and no
// owner.
func (r *Runtime) claim(spec runtime.Spec) *corev1.PersistentVolumeClaim {
	sc := r.cfg.StorageClass
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:      workspaceClaimName(spec.Project, spec.User),
			Namespace: r.cfg.Namespace,
			Labels: map[string]string{
				labelInstallation: r.cfg.Installation,
				labelBackend:      r.cfg.Backend,
				labelUser:         labelValue(spec.User),
				labelProject:      labelValue(spec.Project),
			},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			// ReadWriteOnce: a user's sessions on one node share it; most
			// storage classes offer nothing else.
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &sc,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: r.cfg.workspaceSize},
			},
		},
	}
}

// destination is one egress allowance: a prefix, and a port (0: any).
type destination struct {
	prefix netip.Prefix
	port   uint16
}

// resolveEgress turns a session's allow-list into destinations. A
// NetworkPolicy holds only CIDRs, so host names are resolved now, from the
// control plane, and their addresses are allowed for the session's life:
// a name that moves to other addresses later stays closed until the next
// session. A policy that is not an allow-list needs none.
func resolveEgress(ctx context.Context, egress sdk.Egress, lookup func(context.Context, string) ([]netip.Addr, error)) ([]destination, error) {
	if egress.Mode != sdk.EgressAllowList {
		return nil, nil
	}
	var out []destination
	for _, entry := range egress.Allow {
		host, port, err := splitDestination(entry)
		if err != nil {
			return nil, err
		}
		if p, err := parseCIDR(host); err == nil {
			out = append(out, destination{p, port})
			continue
		}
		addrs, err := lookup(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve egress allow-list host %s: %w", host, err)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("egress allow-list host %s has no address; fix the project's egress allow-list", host)
		}
		for _, a := range addrs {
			a = a.Unmap()
			out = append(out, destination{netip.PrefixFrom(a, a.BitLen()), port})
		}
	}
	return out, nil
}

// splitDestination splits "host[:port]", "[v6]:port" or "cidr[:port]", as
// the oci runtime's netpolicy does.
func splitDestination(entry string) (string, uint16, error) {
	if ap, err := netip.ParseAddrPort(entry); err == nil {
		return ap.Addr().String(), ap.Port(), nil
	}
	host, p, err := net.SplitHostPort(entry)
	if err != nil {
		return entry, 0, nil // no port, or a bare IPv6 address or prefix
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("egress destination %q has an invalid port; fix the project's egress allow-list", entry)
	}
	return host, uint16(port), nil
}

// networkPolicy is the session's NetworkPolicy: nothing may connect to the
// session's Pod, and it may connect to the control plane's link endpoint
// always, to the allow-list's destinations with allow-list, and anywhere
// with all. The organisation's host access (sdk.Egress.HostAccess) names
// services of the oci runtime's host and means nothing here.
func (r *Runtime) networkPolicy(spec runtime.Spec, allowed []destination) *networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	linkPort := intstr.FromInt32(r.cfg.linkPort)
	var controlPlane []networkingv1.NetworkPolicyPeer
	for _, p := range r.cfg.controlPlane {
		controlPlane = append(controlPlane, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.String()}})
	}
	egress := []networkingv1.NetworkPolicyEgressRule{{
		To:    controlPlane,
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &linkPort}},
	}}
	if !r.cfg.linkHostIsIP {
		// The agent resolves LinkURL's host name: DNS must pass, but only to
		// the cluster's resolver in kube-system. Port 53 to anywhere would
		// let a session with egress none tunnel anything to a server of its
		// own on that port.
		dns := intstr.FromInt32(53)
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"},
			}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}},
		})
	}
	switch spec.Egress.Mode {
	case sdk.EgressAll:
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{}) // to anywhere, any port
	case sdk.EgressAllowList:
		for _, d := range allowed {
			rule := networkingv1.NetworkPolicyEgressRule{
				To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: d.prefix.String()}}},
			}
			if d.port != 0 {
				port := intstr.FromInt32(int32(d.port))
				rule.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}, {Protocol: &udp, Port: &port}}
			}
			egress = append(egress, rule)
		}
	}
	meta := r.meta(spec)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: meta,
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{
				labelInstallation: r.cfg.Installation,
				labelBackend:      r.cfg.Backend,
				labelSession:      meta.Labels[labelSession],
			}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     nil, // nothing dials a session's Pod: the agent dials out
			Egress:      egress,
		},
	}
}
