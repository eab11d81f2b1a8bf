package sso

import (
	"fmt"
	"strings"

	"github.com/devgpu/devgpu/internal/names"
)

// UserName turns the value of the username claim into a devgpu user
// name that names.User accepts, deterministically:
//
//  1. it is lower-cased (e-mail addresses and Entra UPNs are
//     case-insensitive; a sub claim that differs only in case would map
//     to the same name, which the binding of a user to its subject at the
//     first login then refuses);
//  2. '@' becomes '_': alice@contoso.com is alice_contoso.com (a domain
//     holds no '_', so the last '_' still marks where the domain starts);
//  3. every other character names.User refuses becomes '-' (Entra guest
//     UPNs such as bob_fabrikam.com#EXT#@contoso.onmicrosoft.com, or a '+'
//     in an address); two values that differ only there map to one name,
//     and the second person to log in with it is refused, because a user
//     is bound to the provider's subject at the first login;
//  4. a name that does not start with a letter or '_' gets a '_' in
//     front (as 1st.shift@x.org → _1st.shift_x.org).
//
// A value that is empty, or longer than 64 characters once mapped, is
// refused: shortening it could give two people one name.
func UserName(claim, value string) (string, error) {
	if value == "" {
		return "", &Error{Msg: fmt.Sprintf("the ID token's %s claim is empty; set oidc.username_claim to a claim your provider fills for every person (preferred_username, email, upn, sub)", claim)}
	}
	var b strings.Builder
	for _, r := range strings.ToLower(value) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			b.WriteRune(r)
		case r == '@':
			b.WriteByte('_')
		default:
			b.WriteByte('-')
		}
	}
	name := b.String()
	if c := name[0]; !(c >= 'a' && c <= 'z' || c == '_') {
		name = "_" + name
	}
	if len(name) > names.MaxName {
		return "", &Error{Msg: fmt.Sprintf("the ID token's %s claim %s makes a user name of %d characters, more than devgpu's %d; set oidc.username_claim to a shorter claim (preferred_username, email, upn, sub)", claim, names.Quote(value), len(name), names.MaxName)}
	}
	if err := names.User(name); err != nil {
		// Unreachable by construction; kept so that a change to
		// names.User cannot let an invalid name through.
		return "", &Error{Msg: fmt.Sprintf("the ID token's %s claim %s does not make a valid devgpu user name (%v); set oidc.username_claim to another claim (preferred_username, email, upn, sub)", claim, names.Quote(value), err), Err: err}
	}
	return name, nil
}
