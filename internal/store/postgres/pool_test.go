package postgres

import (
	"testing"
	"time"
)

func TestPoolConfig(t *testing.T) {
	t.Setenv("PGCONNECT_TIMEOUT", "")
	for _, c := range []struct {
		name, url         string
		maxConns          int32
		minConns          int32
		lifetime, jitter  time.Duration
		idle, healthCheck time.Duration
		connectTimeout    time.Duration
	}{
		{"defaults", "postgres://devgpu@db/devgpu?sslmode=disable",
			16, 0, 30 * time.Minute, 5 * time.Minute, 5 * time.Minute, 15 * time.Second, 3 * time.Second},
		{"the URL's own", "postgres://devgpu@db/devgpu?sslmode=disable&pool_max_conns=3&pool_min_conns=1" +
			"&pool_max_conn_lifetime=1h&pool_max_conn_lifetime_jitter=1m&pool_max_conn_idle_time=2m" +
			"&pool_health_check_period=5s&connect_timeout=10",
			3, 1, time.Hour, time.Minute, 2 * time.Minute, 5 * time.Second, 10 * time.Second},
		{"key=value", "host=db user=devgpu dbname=devgpu pool_max_conns=5",
			5, 0, 30 * time.Minute, 5 * time.Minute, 5 * time.Minute, 15 * time.Second, 3 * time.Second},
	} {
		cfg, err := poolConfig(c.url)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := []any{cfg.MaxConns, cfg.MinConns, cfg.MaxConnLifetime, cfg.MaxConnLifetimeJitter,
			cfg.MaxConnIdleTime, cfg.HealthCheckPeriod, cfg.ConnConfig.ConnectTimeout}
		want := []any{c.maxConns, c.minConns, c.lifetime, c.jitter, c.idle, c.healthCheck, c.connectTimeout}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: pool settings %v, want %v", c.name, got, want)
				break
			}
		}
		if _, ok := cfg.ConnConfig.RuntimeParams["pool_max_conns"]; ok {
			t.Errorf("%s: pool_max_conns would reach the server as a setting", c.name)
		}
	}
	if _, err := poolConfig("postgres://devgpu@db/devgpu?pool_max_conns=none"); err == nil {
		t.Errorf("poolConfig(pool_max_conns=none) succeeded")
	}
}
