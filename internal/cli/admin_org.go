package cli

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/sdk"
)

func newAdminOrgCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "org",
		Short: "Show and change the organisation policy: project defaults, locked settings and GPU quotas",
	}
	var asJSON bool
	printPolicy := func(p sdk.OrgPolicy) error {
		if asJSON {
			return printJSON(p)
		}
		return printOrgPolicy(p)
	}

	show := &cobra.Command{
		Use:   "show",
		Short: "Show the organisation policy",
		Long: `Show the organisation policy: each setting's default for projects (the
organisation's, else the built-in one) and whether projects may change it,
then the organisation-wide GPU quotas.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			p, err := client.OrgPolicy(cmd.Context())
			if err != nil {
				return err
			}
			return printPolicy(p)
		},
	}

	update := &cobra.Command{
		Use:   "update",
		Short: "Change the organisation policy, leaving what is not given alone",
		Long: `Change the organisation policy, leaving what is not given alone.
The setting flags set the defaults of projects that do not set their own;
--lock stops projects from changing a setting, so the default applies to all;
--quota caps the GPUs of a type (and region) in use at once across projects.`,
		Example: `  devgpu admin org update --max-gpus-per-user 2 --lock max_gpus_per_user
  devgpu admin org update --quota t4=8 --quota a100@eu-west=2
  devgpu admin org update --log-limit 256MiB --log-retention 30d
  devgpu admin org update --quota-remove t4 --unlock shell_mode`,
		Args: cobra.NoArgs,
	}
	var (
		f   settingFlags
		chg orgChange
	)
	f.register(update)
	fl := update.Flags()
	fl.StringSliceVar(&chg.unset, "unset", nil, "settings to return to their built-in default, `NAMES` such as max_gpus,shell_mode")
	fl.StringSliceVar(&chg.lock, "lock", nil, "settings projects may not change, `NAMES` such as egress,max_gpus_per_user")
	fl.StringSliceVar(&chg.unlock, "unlock", nil, "settings projects may change again, `NAMES` such as egress")
	fl.StringArrayVar(&chg.quotas, "quota", nil, "cap on the GPUs of a type (and region) in use at once, `TYPE[@REGION]=N`, repeatable (N of -1 removes it)")
	fl.StringArrayVar(&chg.quotaRemove, "quota-remove", nil, "remove the GPU quota for `TYPE[@REGION]`, repeatable")
	fl.StringSliceVar(&chg.registries, "registries", nil, "registries bring-your-own images may come from, `LIST` such as ghcr.io,docker.io/acme (\"\": none)")
	fl.StringSliceVar(&chg.hostAccess, "allow-host-access", nil, "host services sessions may reach, `LIST` of CIDR or IP[:port] such as 169.254.169.254:80,0.0.0.0/0:8080 (\"\": none, the default)")
	fl.StringVar(&chg.logRetention, "log-retention", "", "how long detached runs' logs are kept after the run ends, `DUR` such as 72h or 30d (0: the default, "+defaultRetention+")")
	fl.BoolVar(&chg.requireSSO, "require-sso", false, "people must log in with single sign-on; API tokens then work only for service accounts (admin user update NAME --service-account=true); false turns it off")
	update.RunE = func(cmd *cobra.Command, _ []string) error {
		s, err := f.settings(cmd)
		if err != nil {
			return err
		}
		chg.settings, chg.budgetFields = s, budgetFields(cmd)
		chg.registriesSet = cmd.Flags().Changed("registries")
		chg.hostAccessSet = cmd.Flags().Changed("allow-host-access")
		chg.requireSSOSet = cmd.Flags().Changed("require-sso")
		chg.logRetentionSet = cmd.Flags().Changed("log-retention")
		if chg.empty() {
			return fmt.Errorf("nothing to change; give a default such as --max-gpus-per-user 2, --lock NAME, or --quota t4=8")
		}
		client, _, err := newClient()
		if err != nil {
			return err
		}
		// Compare-and-set: the change is made to the policy as it is
		// when written, so another admin's change at the same time stays.
		p, err := client.UpdateOrgPolicy(cmd.Context(), chg.apply)
		if err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "organisation policy updated")
		return printPolicy(p)
	}

	jsonFlag(show, &asJSON)
	jsonFlag(update, &asJSON)
	cmd.AddCommand(show, update)
	return cmd
}

// orgChange is what `admin org update` was asked to change.
type orgChange struct {
	settings            sdk.ProjectSettings
	budgetFields        []string // the budget fields settings sets; the others are kept
	unset, lock, unlock []string
	quotas, quotaRemove []string // TYPE[@REGION]=N and TYPE[@REGION]
	registries          []string
	registriesSet       bool
	hostAccess          []string
	hostAccessSet       bool
	requireSSO          bool
	requireSSOSet       bool
	logRetention        string
	logRetentionSet     bool
}

// defaultRetention is sdk.DefaultLogRetention in words.
var defaultRetention = inDays(sdk.DefaultLogRetention)

// inDays writes d in days when it is whole days ("7 days"), else as Go
// does less its trailing zero units ("36h", "1m", not "36h0m0s", "1m0s").
func inDays(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == day:
		return "1 day"
	case d > 0 && d%day == 0:
		return fmt.Sprintf("%d days", d/day)
	}
	text := d.String()
	for _, zeros := range []string{"0s", "0m"} {
		if t, ok := strings.CutSuffix(text, zeros); ok && len(t) > 0 && !strings.ContainsAny(t[len(t)-1:], "0123456789") {
			text = t
		}
	}
	return text
}

func (c orgChange) empty() bool {
	return len(policy.SetIn(c.settings)) == 0 && len(c.unset) == 0 && len(c.lock) == 0 &&
		len(c.unlock) == 0 && len(c.quotas) == 0 && len(c.quotaRemove) == 0 && !c.registriesSet && !c.hostAccessSet && !c.requireSSOSet && !c.logRetentionSet
}

// apply returns p with the change made, checked as the server would.
func (c orgChange) apply(p sdk.OrgPolicy) (sdk.OrgPolicy, error) {
	unset, err := settingNames("unset", c.unset)
	if err != nil {
		return p, err
	}
	if err := checkSetAndUnset(c.settings, unset); err != nil {
		return p, err
	}
	lock, err := settingNames("lock", c.lock)
	if err != nil {
		return p, err
	}
	unlock, err := settingNames("unlock", c.unlock)
	if err != nil {
		return p, err
	}
	for _, name := range lock {
		if slices.Contains(unlock, name) {
			return p, fmt.Errorf("%s is both locked (--lock) and unlocked (--unlock); give one of the two", name)
		}
	}
	if c.settings.Budget != nil && len(c.budgetFields) > 0 {
		base := policy.BuiltIn().Budget
		if p.Defaults.Budget != nil {
			base = p.Defaults.Budget
		}
		b, err := policy.MergeBudget(*base, *c.settings.Budget, c.budgetFields)
		if err != nil {
			return p, err
		}
		c.settings.Budget = &b
	}
	out := sdk.OrgPolicy{Defaults: policy.Merge(p.Defaults, c.settings), Registries: p.Registries, AllowHostAccess: p.AllowHostAccess, RequireSSO: p.RequireSSO, LogRetention: p.LogRetention}
	if c.requireSSOSet {
		out.RequireSSO = c.requireSSO
	}
	if c.logRetentionSet {
		written := strings.TrimSpace(c.logRetention)
		d, err := parseDays(written)
		if err != nil || d < 0 {
			return p, fmt.Errorf("--log-retention %q is not a duration such as 72h or 30d (0: the default, %s)", c.logRetention, defaultRetention)
		}
		if d != 0 && (d < policy.MinLogRetention || d > policy.MaxLogRetention) {
			return p, fmt.Errorf("--log-retention %s is out of range; give 0 (the default, %s) or a duration from %s to %s", written, defaultRetention, inDays(policy.MinLogRetention), inDays(policy.MaxLogRetention))
		}
		out.LogRetention = sdk.Duration(d)
	}
	if c.registriesSet {
		out.Registries = cleanList(c.registries)
	}
	if c.hostAccessSet {
		out.AllowHostAccess = cleanList(c.hostAccess)
	}
	if out.Defaults, err = policy.Unset(out.Defaults, unset); err != nil {
		return p, err
	}
	for _, name := range p.Locked {
		if !slices.Contains(unlock, name) {
			out.Locked = append(out.Locked, name)
		}
	}
	for _, name := range lock {
		if !slices.Contains(out.Locked, name) {
			out.Locked = append(out.Locked, name)
		}
	}
	if out.Quotas, err = applyQuotas(p.Quotas, c.quotas, c.quotaRemove); err != nil {
		return p, err
	}
	if err := policy.ValidateOrg(out); err != nil {
		return p, err
	}
	return out, nil
}

// parseQuota reads --quota TYPE[@REGION]=N; N of -1 means remove.
func parseQuota(s string) (sdk.Quota, error) {
	key, n, ok := strings.Cut(s, "=")
	if !ok {
		return sdk.Quota{}, fmt.Errorf("--quota %q has no maximum; give TYPE[@REGION]=N, e.g. t4=8 or a100@eu-west=2", s)
	}
	q, err := parseQuotaKey("quota", key)
	if err != nil {
		return q, err
	}
	max, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || max < -1 {
		return q, fmt.Errorf("--quota %q needs a whole number of GPUs (0 or more, or -1 to remove the quota) after the =", s)
	}
	q.Max = max
	return q, nil
}

// parseQuotaKey reads TYPE[@REGION].
func parseQuotaKey(flag, s string) (sdk.Quota, error) {
	typ, region, hasRegion := strings.Cut(strings.TrimSpace(s), "@")
	typ, region = strings.TrimSpace(typ), strings.TrimSpace(region)
	if typ == "" || (hasRegion && region == "") || strings.ContainsAny(typ+region, "@=") {
		return sdk.Quota{}, fmt.Errorf("--%s %q is not TYPE or TYPE@REGION, e.g. t4 or a100@eu-west", flag, s)
	}
	return sdk.Quota{GPUType: typ, Region: region}, nil
}

func quotaKey(q sdk.Quota) string {
	if q.Region == "" {
		return q.GPUType
	}
	return q.GPUType + "@" + q.Region
}

// applyQuotas returns qs with the --quota values set (a max of -1
// removes) and the --quota-remove keys removed. Removing a quota that does
// not exist is an error, as it is most likely a typing mistake.
func applyQuotas(qs []sdk.Quota, set, remove []string) ([]sdk.Quota, error) {
	out := slices.Clone(qs)
	seen := map[string]string{} // key -> flag that named it
	drop := func(key string) error {
		i := slices.IndexFunc(out, func(q sdk.Quota) bool { return quotaKey(q) == key })
		if i < 0 {
			return fmt.Errorf("there is no GPU quota for %s to remove; `devgpu admin org show` lists them", key)
		}
		out = slices.Delete(out, i, i+1)
		return nil
	}
	name := func(flag, key string) error {
		if prev, ok := seen[key]; ok {
			return fmt.Errorf("the GPU quota for %s is given twice (--%s and --%s); give it once", key, prev, flag)
		}
		seen[key] = flag
		return nil
	}
	for _, s := range remove {
		q, err := parseQuotaKey("quota-remove", s)
		if err != nil {
			return nil, err
		}
		if err := name("quota-remove", quotaKey(q)); err != nil {
			return nil, err
		}
		if err := drop(quotaKey(q)); err != nil {
			return nil, err
		}
	}
	for _, s := range set {
		q, err := parseQuota(s)
		if err != nil {
			return nil, err
		}
		key := quotaKey(q)
		if err := name("quota", key); err != nil {
			return nil, err
		}
		if q.Max == -1 {
			if err := drop(key); err != nil {
				return nil, err
			}
			continue
		}
		if i := slices.IndexFunc(out, func(o sdk.Quota) bool { return quotaKey(o) == key }); i >= 0 {
			out[i].Max = q.Max
		} else {
			out = append(out, q)
		}
	}
	return out, nil
}

// printOrgPolicy prints each setting's default for projects with where it
// comes from and whether it is locked, then the GPU quotas.
func printOrgPolicy(p sdk.OrgPolicy) error {
	org, builtIn := settingValues(p.Defaults), settingValues(policy.BuiltIn())
	tw := table("SETTING", "DEFAULT", "SOURCE", "LOCKED")
	for _, name := range policy.Names {
		v, src := org[name], "org"
		if _, ok := org[name]; !ok {
			v, src = builtIn[name], "default"
		}
		row(tw, name, formatSetting(name, v), src, yesNo(slices.Contains(p.Locked, name)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Println()
	tw = table("GPU-TYPE", "REGION", "QUOTA")
	for _, q := range p.Quotas {
		row(tw, q.GPUType, orAny(q.Region), q.Max)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	registries := "none (catalog images only)"
	if len(p.Registries) > 0 {
		registries = strings.Join(p.Registries, ", ")
	}
	fmt.Printf("\nbring-your-own images from: %s\n", registries)
	hostAccess := "none"
	if len(p.AllowHostAccess) > 0 {
		hostAccess = strings.Join(p.AllowHostAccess, ", ")
	}
	fmt.Printf("host services open to sessions: %s\n", hostAccess)
	sso := "no (API tokens work for everyone)"
	if p.RequireSSO {
		sso = "yes (API tokens work for service accounts only)"
	}
	fmt.Printf("single sign-on required: %s\n", sso)
	retention := defaultRetention + " (default)"
	if p.LogRetention > 0 {
		retention = inDays(time.Duration(p.LogRetention))
	}
	fmt.Printf("detached runs' logs kept after they end: %s\n", retention)
	return nil
}

func orAny(s string) string {
	if s == "" {
		return "any"
	}
	return s
}
