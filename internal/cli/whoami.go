package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/names"
	"github.com/devgpu/devgpu/sdk"
)

// whoamiOutput is `whoami --json`: the server's answer, plus where and
// how this CLI logged in.
type whoamiOutput struct {
	sdk.Whoami
	Server string `json:"server"`
	// Flow is how a single sign-on was made: browser or device.
	Flow string `json:"flow,omitempty"`
}

func newWhoamiCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show who you are on the current server: how you logged in, your roles and projects",
		Long: `Show who you are on the current server: your user, how you logged in (API
token or single sign-on, with your identity-provider groups), your
organisation role, your projects and roles (those your groups give are
marked "from group"), and when your credential expires.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, cfg, err := newClient()
			if err != nil {
				return err
			}
			me, err := client.Whoami(cmd.Context())
			if err != nil {
				return err
			}
			cr := cfg.current()
			out := whoamiOutput{Whoami: me, Server: client.URL.String()}
			if out.Auth == "" {
				out.Auth = sdk.AuthToken
			}
			if out.Auth == sdk.AuthSSO {
				out.Flow = cr.Flow
			}
			if asJSON {
				return printJSON(out)
			}
			printWhoami(os.Stdout, out, time.Now())
			return nil
		},
	}
	jsonFlag(cmd, &asJSON)
	return cmd
}

// printWhoami writes the answer as labelled lines.
func printWhoami(w io.Writer, me whoamiOutput, now time.Time) {
	line := func(label, value string) {
		fmt.Fprintf(w, "%-10s %s\n", label+":", names.Escape(value))
	}
	line("user", me.User)
	line("server", me.Server)
	switch me.Auth {
	case sdk.AuthSSO:
		how := "single sign-on"
		if me.Flow != "" {
			how += " (" + me.Flow + ")"
		}
		if len(me.Groups) > 0 {
			how += "; groups: " + strings.Join(me.Groups, ", ")
		}
		line("login", how)
	default:
		line("login", "API token")
	}
	role := "member"
	if me.OrgAdmin {
		role = "organisation admin"
	}
	if me.ServiceAccount {
		role += ", service account"
	}
	line("org role", role)
	if len(me.Projects) == 0 {
		line("projects", "none")
	}
	for i, p := range me.Projects {
		label := ""
		if i == 0 {
			label = "projects"
		}
		v := p.Name + " (" + p.Role
		if p.Source == "group" {
			v += ", from group"
		}
		v += ")"
		if label == "" {
			fmt.Fprintf(w, "%-10s %s\n", "", names.Escape(v))
		} else {
			line(label, v)
		}
	}
	switch {
	case me.ExpiresAt == nil:
		line("expires", "never (revoke it with `devgpu admin token revoke`)")
	default:
		v := me.ExpiresAt.Local().Format("2006-01-02 15:04 MST")
		if d := me.ExpiresAt.Sub(now); d > 0 {
			v += " (in " + d.Round(time.Minute).String() + ")"
		} else {
			v += " (expired)"
		}
		if me.Auth == sdk.AuthSSO {
			v += ", renewed automatically"
		}
		line("expires", v)
	}
}
