//go:build linux && !agentonly

package aca

import (
	"maps"
	"slices"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/appcontainers/armappcontainers/v3"

	"github.com/devgpu/devgpu/internal/runtime"
)

// agentArgs is the session container's command: the agent the session
// image's last layer holds, linking out to the control plane with the
// credentials in the Secret volume's files (never in env or args, which
// anyone who may read the job can read), as kube's agents do.
func (c *checked) agentArgs(spec runtime.Spec) []string {
	return append([]string{agentPath}, runtime.AgentArgs(spec.SessionID, c.LinkURL, secretDir, spec.IdleExit, len(c.LinkCA) > 0)...)
}

// node is where every session of the backend runs, as far as devgpu can
// name it: the platform places replicas on machines it does not name.
func (c *checked) node() string { return "aca/" + c.Environment }

// env is the session's environment contract: devices nil, since the
// platform chooses the GPU (and sets NVIDIA_VISIBLE_DEVICES; the agent
// sets CUDA_VISIBLE_DEVICES from what it sees), and DEVGPU_NODE the
// backend's node.
func (c *checked) env(spec runtime.Spec) []*armappcontainers.EnvironmentVar {
	vars := runtime.SessionEnv(spec, nil)
	vars["DEVGPU_NODE"] = c.node()
	out := make([]*armappcontainers.EnvironmentVar, 0, len(vars))
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		out = append(out, &armappcontainers.EnvironmentVar{Name: ptr(k), Value: ptr(vars[k])})
	}
	return out
}

// job is the session's Container Apps job: started by hand, one replica
// that is never retried, bounded by ReplicaTimeout, on the GPU type's
// workload profile, pulling image with RegistryIdentity, and the agent's
// secrets as files of a Secret volume. The REST shape is
// Microsoft.App/jobs in azure-rest-api-specs
// specification/app/resource-manager/Microsoft.App/stable/2025-01-01/Jobs.json
// (JobConfiguration, ManualTriggerConfig, JobTemplate, Secret volumes:
// "storageType": "Secret" with "secrets": [{"secretRef","path"}]).
func (c *checked) job(spec runtime.Spec, image string) armappcontainers.Job {
	secrets := []*armappcontainers.Secret{
		{Name: ptr(secretAgent), Value: ptr(spec.AgentSecret)},
		{Name: ptr(secretLink), Value: ptr(spec.LinkCredential)},
	}
	if len(c.LinkCA) > 0 {
		secrets = append(secrets, &armappcontainers.Secret{Name: ptr(secretCA), Value: ptr(string(c.LinkCA))})
	}
	items := make([]*armappcontainers.SecretVolumeItem, len(secrets))
	for i, s := range secrets {
		items[i] = &armappcontainers.SecretVolumeItem{SecretRef: s.Name, Path: s.Name}
	}
	res := c.resources(spec.GPU.Type, spec.GPU.Count)
	cmd := c.agentArgs(spec)
	command := make([]*string, len(cmd))
	for i := range cmd {
		command[i] = &cmd[i]
	}
	// check refuses "system": the job pulls with the user-assigned
	// identity RegistryIdentity names.
	identity := &armappcontainers.ManagedServiceIdentity{
		Type:                   ptr(armappcontainers.ManagedServiceIdentityTypeUserAssigned),
		UserAssignedIdentities: map[string]*armappcontainers.UserAssignedIdentity{c.RegistryIdentity: {}},
	}
	return armappcontainers.Job{
		Location: ptr(c.region),
		Tags:     c.tags(spec.SessionID, spec.User, spec.Project),
		Identity: identity,
		Properties: &armappcontainers.JobProperties{
			EnvironmentID:       ptr(c.environmentID),
			WorkloadProfileName: ptr(c.profile(spec.GPU.Type, spec.GPU.Count)),
			Configuration: &armappcontainers.JobConfiguration{
				TriggerType:       ptr(armappcontainers.TriggerTypeManual),
				ReplicaTimeout:    ptr(int32(c.ReplicaTimeout.Seconds())),
				ReplicaRetryLimit: ptr(int32(0)),
				ManualTriggerConfig: &armappcontainers.JobConfigurationManualTriggerConfig{
					Parallelism:            ptr(int32(1)),
					ReplicaCompletionCount: ptr(int32(1)),
				},
				Secrets: secrets,
				Registries: []*armappcontainers.RegistryCredentials{{
					Server:   ptr(c.Registry),
					Identity: ptr(c.RegistryIdentity),
				}},
			},
			Template: &armappcontainers.JobTemplate{
				Containers: []*armappcontainers.Container{{
					Name:      ptr(containerName),
					Image:     ptr(image),
					Command:   command,
					Env:       c.env(spec),
					Resources: &armappcontainers.ContainerResources{CPU: ptr(res.CPU), Memory: ptr(res.Memory)},
					VolumeMounts: []*armappcontainers.VolumeMount{{
						VolumeName: ptr(volumeSecret),
						MountPath:  ptr(secretDir),
					}},
				}},
				Volumes: []*armappcontainers.Volume{{
					Name:        ptr(volumeSecret),
					StorageType: ptr(armappcontainers.StorageTypeSecret),
					Secrets:     items,
				}},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }
