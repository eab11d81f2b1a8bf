package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/sdk"
)

func newAdminProjectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "project",
		Short: "Create, change, show, list and delete projects",
		Long: `Create, change, show, list and delete projects.
A project's settings are its own where it sets them and the organisation
policy allows, else the organisation's defaults, else built-in ones; see
` + "`devgpu admin org show`" + `.`,
	}
	var asJSON bool
	printProject := func(p sdk.Project) error {
		if asJSON {
			return printJSON(p)
		}
		return printEffective(p)
	}

	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a project; the settings not given inherit",
		Args:  cobra.ExactArgs(1),
	}
	var createFlags settingFlags
	createFlags.register(create)
	create.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := createFlags.settings(cmd)
		if err != nil {
			return err
		}
		client, _, err := newClient()
		if err != nil {
			return err
		}
		p, err := client.CreateProject(cmd.Context(), sdk.ProjectCreate{Name: args[0], Settings: s})
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "project %s created; add members with `devgpu admin member add %s USER`\n", p.Name, p.Name)
		return printProject(p)
	}

	update := &cobra.Command{
		Use:   "update NAME",
		Short: "Change a project's settings, leaving those not given alone",
		Args:  cobra.ExactArgs(1),
	}
	var updateFlags settingFlags
	updateFlags.register(update)
	var unset []string
	var stopRunning bool
	update.Flags().StringSliceVar(&unset, "unset", nil, "settings to inherit again from the organisation, `NAMES` such as max_gpus,shell_mode")
	update.Flags().BoolVar(&stopRunning, "stop-running", false, "with --gpu-enabled=false, also end the project's running sessions")
	update.RunE = func(cmd *cobra.Command, args []string) error {
		u, err := projectUpdate(cmd, &updateFlags, unset, stopRunning)
		if err != nil {
			return err
		}
		client, _, err := newClient()
		if err != nil {
			return err
		}
		p, err := client.UpdateProject(cmd.Context(), args[0], u)
		if err != nil {
			return err
		}
		if u.Settings.GPUEnabled != nil && !*u.Settings.GPUEnabled && !u.StopRunning {
			fmt.Fprintf(os.Stderr, "GPU sessions disabled in project %s; running sessions go on until they end (--stop-running ends them now)\n", p.Name)
		}
		return printProject(p)
	}

	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a project's settings as they apply, and where each comes from",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			p, err := client.Project(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printProject(p)
		},
	}

	list := &cobra.Command{
		Use:   "list",
		Short: "List the projects you can see",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			ps, err := client.Projects(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(ps)
			}
			tw := table("NAME", "GPU-ENABLED", "MAX-GPUS", "PER-USER", "SHELL-MODE")
			for _, p := range ps {
				cols := []any{p.Name}
				for _, name := range []string{"gpu_enabled", "max_gpus", "max_gpus_per_user", "shell_mode"} {
					var v any
					if e, ok := p.Effective[name]; ok {
						v = e.Value
					}
					cols = append(cols, formatSetting(name, v))
				}
				row(tw, cols...)
			}
			return tw.Flush()
		},
	}

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a project with no running sessions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			if err := client.DeleteProject(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "project %s deleted\n", args[0])
			return nil
		},
	}
	for _, c := range []*cobra.Command{create, update, show, list} {
		jsonFlag(c, &asJSON)
	}
	cmd.AddCommand(create, update, show, list, del)
	return cmd
}

// projectUpdate collects `admin project update`'s flags into the request.
func projectUpdate(cmd *cobra.Command, f *settingFlags, unsetFlag []string, stopRunning bool) (sdk.ProjectUpdate, error) {
	var u sdk.ProjectUpdate
	s, err := f.settings(cmd)
	if err != nil {
		return u, err
	}
	unset, err := settingNames("unset", unsetFlag)
	if err != nil {
		return u, err
	}
	if err := checkSetAndUnset(s, unset); err != nil {
		return u, err
	}
	if stopRunning && (s.GPUEnabled == nil || *s.GPUEnabled) {
		return u, fmt.Errorf("--stop-running ends sessions only when GPUs are being disabled; add --gpu-enabled=false")
	}
	if len(policy.SetIn(s)) == 0 && len(unset) == 0 {
		return u, fmt.Errorf("nothing to change; give a setting such as --max-gpus 4, or --unset NAME to inherit one again")
	}
	return sdk.ProjectUpdate{Settings: s, Unset: unset, StopRunning: stopRunning, BudgetFields: budgetFields(cmd)}, nil
}

// printEffective prints a project's effective settings with their sources.
func printEffective(p sdk.Project) error {
	tw := table("SETTING", "VALUE", "SOURCE")
	for _, name := range settingOrder(p.Effective) {
		e := p.Effective[name]
		src := e.Source
		if e.Locked {
			src += " (locked)"
		}
		row(tw, name, formatSetting(name, e.Value), src)
	}
	return tw.Flush()
}
