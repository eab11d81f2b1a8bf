package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/devgpu/devgpu/internal/store"
)

const projectColumns = `id, name, settings, created_at, updated_at`

func scanProject(row interface{ Scan(...any) error }) (p store.Project, err error) {
	var settings string
	if err = row.Scan(&p.ID, &p.Name, &settings, timeCol{&p.CreatedAt}, timeCol{&p.UpdatedAt}); err != nil {
		return p, err
	}
	if err = decodeJSON(settings, &p.Settings); err != nil {
		return p, fmt.Errorf("project %s settings: %w", p.Name, err)
	}
	return p, nil
}

// CreateProject inserts p and sets its ID and times. p.Settings becomes
// what will read back (see encodeSettings).
func (s *Store) CreateProject(ctx context.Context, p *store.Project) error {
	action := "create project " + p.Name
	settings, err := encodeSettings(&p.Settings)
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	if p.CreatedAt.IsZero() {
		p.CreatedAt = now()
	}
	p.CreatedAt = norm(p.CreatedAt)
	p.UpdatedAt = p.CreatedAt
	err = s.write(ctx, func() error {
		return s.queryRow(ctx, `INSERT INTO projects (name, settings, created_at, updated_at)
			VALUES (?, ?, ?, ?) RETURNING id`,
			p.Name, settings, dbTime(p.CreatedAt), dbTime(p.UpdatedAt)).Scan(&p.ID)
	})
	return s.wrap(action, err)
}

// UpdateProject writes every field of p but CreatedAt, and sets UpdatedAt.
// p.Settings becomes what will read back (see encodeSettings).
func (s *Store) UpdateProject(ctx context.Context, p *store.Project) error {
	action := "update project " + p.Name
	settings, err := encodeSettings(&p.Settings)
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	at := now()
	err = s.write(ctx, func() error {
		res, err := s.exec(ctx, `UPDATE projects SET name = ?, settings = ?, updated_at = ? WHERE id = ?`,
			p.Name, settings, dbTime(at), p.ID)
		if err != nil {
			return err
		}
		return affected(res)
	})
	if err == nil {
		p.UpdatedAt = at
	}
	return s.wrap(action, err)
}

// ProjectByName returns the project with this name.
func (s *Store) ProjectByName(ctx context.Context, name string) (store.Project, error) {
	p, err := scanProject(s.queryRow(ctx, `SELECT `+projectColumns+` FROM projects WHERE name = ?`, name))
	return p, s.wrap("get project "+name, err)
}

// ProjectByID returns the project with this ID.
func (s *Store) ProjectByID(ctx context.Context, id int64) (store.Project, error) {
	p, err := scanProject(s.queryRow(ctx, `SELECT `+projectColumns+` FROM projects WHERE id = ?`, id))
	return p, s.wrap(fmt.Sprintf("get project %d", id), err)
}

// ListProjects returns all projects by name.
func (s *Store) ListProjects(ctx context.Context) ([]store.Project, error) {
	rows, err := s.query(ctx, `SELECT `+projectColumns+` FROM projects ORDER BY name`)
	ps, err := collect(rows, err, func(rows *sql.Rows) (store.Project, error) { return scanProject(rows) })
	return ps, s.wrap("list projects", err)
}

// DeleteProject deletes the project with its members and ended sessions.
func (s *Store) DeleteProject(ctx context.Context, id int64) error {
	return s.wrap(fmt.Sprintf("delete project %d", id), s.tx(ctx, func(tx *Store) error {
		var active int
		if err := tx.queryRow(ctx, `SELECT COUNT(*) FROM sessions s WHERE s.project_id = ? AND `+activeSession, id).Scan(&active); err != nil {
			return err
		}
		if active > 0 {
			return fmt.Errorf("%d active sessions: %w", active, store.ErrConflict)
		}
		res, err := tx.exec(ctx, `DELETE FROM projects WHERE id = ?`, id)
		if err != nil {
			return err
		}
		return affected(res)
	}))
}

// SetMember adds the user to the project or changes their role and
// source.
func (s *Store) SetMember(ctx context.Context, m store.Member) error {
	action := fmt.Sprintf("set member %d of project %d", m.UserID, m.ProjectID)
	if m.Role != store.RoleDeveloper && m.Role != store.RoleAdmin {
		return fmt.Errorf("%s: unknown role %q", action, m.Role)
	}
	if m.Source != "" && m.Source != store.MemberSourceGroup {
		return fmt.Errorf("%s: unknown source %q", action, m.Source)
	}
	return s.wrap(action, s.write(ctx, func() error {
		_, err := s.exec(ctx, `INSERT INTO members (project_id, user_id, role, source) VALUES (?, ?, ?, ?)
			ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role, source = excluded.source`,
			m.ProjectID, m.UserID, m.Role, m.Source)
		return err
	}))
}

// RemoveMember removes the user from the project.
func (s *Store) RemoveMember(ctx context.Context, projectID, userID int64) error {
	err := s.write(ctx, func() error {
		res, err := s.exec(ctx, `DELETE FROM members WHERE project_id = ? AND user_id = ?`, projectID, userID)
		if err != nil {
			return err
		}
		return affected(res)
	})
	return s.wrap(fmt.Sprintf("remove member %d of project %d", userID, projectID), err)
}

// MemberRole returns the user's role in the project.
func (s *Store) MemberRole(ctx context.Context, projectID, userID int64) (string, error) {
	var role string
	err := s.queryRow(ctx, `SELECT role FROM members WHERE project_id = ? AND user_id = ?`, projectID, userID).Scan(&role)
	return role, s.wrap(fmt.Sprintf("get role of %d in project %d", userID, projectID), err)
}

const memberColumns = `m.project_id, p.name, m.user_id, u.name, m.role, m.source`

// memberJoins follows a membership to its project and user, for their names.
const memberJoins = `members m JOIN projects p ON p.id = m.project_id JOIN users u ON u.id = m.user_id`

func scanMember(m *store.Member) []any {
	return []any{&m.ProjectID, &m.Project, &m.UserID, &m.User, &m.Role, &m.Source}
}

// ListMembers returns the project's members by user name.
func (s *Store) ListMembers(ctx context.Context, projectID int64) ([]store.Member, error) {
	rows, err := s.query(ctx, `SELECT `+memberColumns+` FROM `+memberJoins+` WHERE m.project_id = ? ORDER BY u.name`, projectID)
	ms, err := collect(rows, err, func(rows *sql.Rows) (m store.Member, err error) {
		return m, rows.Scan(scanMember(&m)...)
	})
	return ms, s.wrap(fmt.Sprintf("list members of project %d", projectID), err)
}

// ListUserMembers returns the user's memberships by project name.
func (s *Store) ListUserMembers(ctx context.Context, userID int64) ([]store.Member, error) {
	rows, err := s.query(ctx, `SELECT `+memberColumns+` FROM `+memberJoins+` WHERE m.user_id = ? ORDER BY p.name`, userID)
	ms, err := collect(rows, err, func(rows *sql.Rows) (m store.Member, err error) {
		return m, rows.Scan(scanMember(&m)...)
	})
	return ms, s.wrap(fmt.Sprintf("list memberships of user %d", userID), err)
}
