package sso

import (
	"fmt"
	"strings"

	"github.com/devgpu/devgpu/internal/names"
)

// UserName turns the value of the username claim into a devgpu user
// name that names.User accepts, deterministically:
//
//  1. the value may hold only ASCII letters, digits, '.', '_', '-' and
//     '@'; any other character (a space, '+', '#', 'é', the Kelvin sign
//     U+212A) refuses it rather than being replaced, since replacing
//     would give two values (bob+1@x and bob-1@x, ålice and élice) one
//     name;
//  2. ASCII upper-case letters become lower-case, and only they (e-mail
//     addresses and Entra UPNs are case-insensitive; strings.ToLower
//     would also fold Unicode, which rule 1 keeps out anyway);
//  3. '@' becomes '_': alice@contoso.com is alice_contoso.com (a domain
//     holds no '_', so the last '_' still marks where the domain starts);
//  4. a value that does not start with a letter gets a '_' in front,
//     also one that starts with '_' already (1st.shift@x.org →
//     _1st.shift_x.org, _svc → __svc): names that start with a letter
//     come only from values that do, and names that start with '_' only
//     from values that do not, so the prefix never gives two values one
//     name.
//
// So two values make one name only when they differ in the case of
// ASCII letters or in '@' against '_' at the same place (Alice@x.org,
// alice@x.org and alice_x.org); the second person to log in with such a
// name is refused, because a user is bound to the provider's subject at
// the first login.
//
// A value that is empty, or longer than 64 characters once mapped, is
// refused too: shortening it could give two people one name.
func UserName(claim, value string) (string, error) {
	if value == "" {
		return "", &Error{Msg: fmt.Sprintf("the ID token's %s claim is empty; set oidc.username_claim to a claim your provider fills for every person (preferred_username, email, upn, sub)", claim)}
	}
	var b strings.Builder
	if c := value[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
		b.WriteByte('_')
	}
	// Byte by byte: every byte of a multi-byte character is >= 0x80 and
	// refused.
	for i := 0; i < len(value); i++ {
		switch c := value[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
			b.WriteByte(c)
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c - 'A' + 'a')
		case c == '@':
			b.WriteByte('_')
		default:
			// %+q writes non-ASCII characters as \u escapes, so that
			// one that looks like a letter (the Kelvin sign) shows.
			return "", &Error{Msg: fmt.Sprintf("the identity provider names you %+q, which holds characters devgpu user names cannot (only letters, digits, '.', '_', '-' and '@'); ask the administrator to set oidc.username_claim to another claim", value)}
		}
	}
	name := b.String()
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
