package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

func newAdminCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "admin", Short: "Administer projects and their policies"}
	cmd.AddCommand(newAdminProjectCmd())
	return cmd
}

func newAdminProjectCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "project", Short: "Create, change, show, list and delete projects"}
	var asJSON bool
	printProject := func(p sdk.Project) error {
		if asJSON {
			return printJSON(p)
		}
		tw := table("SETTING", "VALUE")
		row(tw, "name", p.Name)
		row(tw, "gpu-enabled", p.GPUEnabled)
		row(tw, "detach-grace", time.Duration(p.DetachGrace))
		return tw.Flush()
	}
	// settingFlags adds the setting flags and returns a function that
	// collects only those given, so update leaves the others alone.
	settingFlags := func(c *cobra.Command) func() sdk.ProjectUpdate {
		var enabled bool
		var grace time.Duration
		c.Flags().BoolVar(&enabled, "gpu-enabled", true, "allow GPU sessions in the project")
		c.Flags().DurationVar(&grace, "detach-grace", 60*time.Second, "how long a session waits for a vanished client to come back")
		return func() sdk.ProjectUpdate {
			var u sdk.ProjectUpdate
			if c.Flags().Changed("gpu-enabled") {
				u.GPUEnabled = &enabled
			}
			if c.Flags().Changed("detach-grace") {
				d := sdk.Duration(grace)
				u.DetachGrace = &d
			}
			return u
		}
	}

	create := &cobra.Command{Use: "create NAME", Short: "Create a project", Args: cobra.ExactArgs(1)}
	createSettings := settingFlags(create)
	create.RunE = func(cmd *cobra.Command, args []string) error {
		client, _, err := newClient()
		if err != nil {
			return err
		}
		p, err := client.CreateProject(cmd.Context(), sdk.ProjectCreate{Name: args[0], ProjectUpdate: createSettings()})
		if err != nil {
			return err
		}
		return printProject(p)
	}

	update := &cobra.Command{Use: "update NAME", Short: "Change a project's settings", Args: cobra.ExactArgs(1)}
	updateSettings := settingFlags(update)
	update.RunE = func(cmd *cobra.Command, args []string) error {
		client, _, err := newClient()
		if err != nil {
			return err
		}
		u := updateSettings()
		if u == (sdk.ProjectUpdate{}) {
			return fmt.Errorf("nothing to change; give a setting such as --gpu-enabled=false")
		}
		p, err := client.UpdateProject(cmd.Context(), args[0], u)
		if err != nil {
			return err
		}
		return printProject(p)
	}

	show := &cobra.Command{
		Use: "show NAME", Short: "Show a project's settings", Args: cobra.ExactArgs(1),
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
		Use: "list", Short: "List the projects you can see", Args: cobra.NoArgs,
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
			tw := table("NAME", "GPU-ENABLED", "DETACH-GRACE")
			for _, p := range ps {
				row(tw, p.Name, p.GPUEnabled, time.Duration(p.DetachGrace))
			}
			return tw.Flush()
		},
	}

	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a project with no running sessions", Args: cobra.ExactArgs(1),
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
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	}
	cmd.AddCommand(create, update, show, list, del)
	return cmd
}
