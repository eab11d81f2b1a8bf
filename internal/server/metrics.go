package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// metrics are the control plane's Prometheus metrics. Counters and
// histograms are updated where things happen; gauges of state (sessions,
// GPUs, queues, attachments, budgets) are read from the source at scrape
// time, so they cannot drift.
type metrics struct {
	registry   *prometheus.Registry
	admissions *prometheus.CounterVec
	ended      *prometheus.CounterVec
	startup    prometheus.Histogram
	firstByte  prometheus.Histogram
	// connsRefused counts connections closed at accept, over a cap.
	connsRefused prometheus.Counter
	// logBytes and logDropped count detached runs' output written to the
	// store's logs, and dropped (over a log's limit, or the write rate).
	logBytes, logDropped prometheus.Counter
}

// startBuckets cover a local start (milliseconds) to a cold image pull.
var startBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devgpu_admissions_total",
			Help: "Session requests by outcome (admitted, joined, refused) and refusal reason.",
		}, []string{"outcome", "reason"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devgpu_sessions_ended_total",
			Help: "Sessions that ended, by reason.",
		}, []string{"reason"}),
		startup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "devgpu_session_start_seconds",
			Help:    "Time from a session request to the session running.",
			Buckets: startBuckets,
		}),
		firstByte: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "devgpu_session_first_byte_seconds",
			Help:    "Time from a session request to the first byte of its first shell.",
			Buckets: startBuckets,
		}),
		connsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devgpu_connections_refused_total",
			Help: "Connections closed as soon as accepted: over the cap per address or in all.",
		}),
		logBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devgpu_run_log_bytes_total",
			Help: "Bytes of detached runs' output written to the log.",
		}),
		logDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devgpu_run_log_dropped_bytes_total",
			Help: "Bytes of detached runs' output not kept: over a project's log limit, or printed faster than the log is written.",
		}),
	}
	m.registry.MustRegister(m.admissions, m.ended, m.startup, m.firstByte, m.connsRefused, m.logBytes, m.logDropped, &stateCollector{s: s},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// handler serves the metrics. With a token it requires it as a bearer
// token; without one the metrics hold no project or user names (the
// collector leaves per-project series out).
func (m *metrics) handler(token string, log *slog.Logger) http.Handler {
	h := promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
	if token == "" {
		return h
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearerToken(r.Header.Get("Authorization"))
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			httpapi.WriteError(w, r, log, httpapi.Errorf(http.StatusUnauthorized,
				"/metrics needs the scrape token; give it as `Authorization: Bearer TOKEN` (Prometheus: authorization.credentials)"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// stateCollector reads the gauges from the store and the server's memory.
type stateCollector struct{ s *Server }

var (
	descSessions    = prometheus.NewDesc("devgpu_sessions", "Sessions not yet ended, by state.", []string{"state"}, nil)
	descGPUs        = prometheus.NewDesc("devgpu_gpus", "GPUs in the inventory, by type and region.", []string{"gpu_type", "region"}, nil)
	descGPUsInUse   = prometheus.NewDesc("devgpu_gpus_in_use", "GPUs reserved by sessions, by type and region.", []string{"gpu_type", "region"}, nil)
	descQueue       = prometheus.NewDesc("devgpu_queue_length", "Session requests waiting for GPUs, by project (only with a metrics token).", []string{"project"}, nil)
	descQueued      = prometheus.NewDesc("devgpu_queued_requests", "Session requests waiting for GPUs, in all projects.", nil, nil)
	descAttachments = prometheus.NewDesc("devgpu_attachments", "Shells attached to running sessions.", nil, nil)
	descBudget      = prometheus.NewDesc("devgpu_budget_used_ratio", "Share of the monthly budget used, by project (1 is all of it; only with a metrics token).", []string{"project"}, nil)
	descCollectErr  = prometheus.NewDesc("devgpu_metrics_collect_errors", "1 when the last scrape could not read the state.", nil, nil)
	descLeader      = prometheus.NewDesc("devgpu_leader", "1 while this replica holds the leader lease and runs the background work.", nil, nil)
	descLeaseEpoch  = prometheus.NewDesc("devgpu_lease_epoch", "The leader lease's fencing epoch this replica last held (0: never).", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeader, descLeaseEpoch, descSessions, descGPUs, descGPUsInUse, descQueue, descQueued, descAttachments, descBudget, descCollectErr} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(c.s.ctx, 5*time.Second)
	defer cancel()
	// Leadership is this replica's own, known without the store.
	lease, leads := c.s.leading()
	leader := 0.0
	if leads {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descLeaseEpoch, prometheus.GaugeValue, float64(lease.Epoch))
	failed := 0.0
	if err := c.collect(ctx, ch); err != nil {
		c.s.log.Error("collect metrics", "err", err)
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(descCollectErr, prometheus.GaugeValue, failed)
}

func (c *stateCollector) collect(ctx context.Context, ch chan<- prometheus.Metric) error {
	s := c.s
	active, err := s.store.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil {
		return err
	}
	states := map[string]int{"starting": 0, "running": 0, "stopping": 0}
	queues := map[string]int{}
	for _, sess := range active {
		if sess.State == sdk.StateQueued {
			queues[sess.Project]++
			continue
		}
		states[sess.State]++
	}
	for state, n := range states {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n), state)
	}
	pools, err := s.gpuPools(ctx, s.store)
	if err != nil {
		return err
	}
	for _, p := range pools {
		ch <- prometheus.MustNewConstMetric(descGPUs, prometheus.GaugeValue, float64(p.Total), p.Type, p.Region)
		ch <- prometheus.MustNewConstMetric(descGPUsInUse, prometheus.GaugeValue, float64(p.Total-p.Free), p.Type, p.Region)
	}
	// Project names only reach scrapers that authenticate.
	named := s.cfg.MetricsToken != ""
	queued := 0
	for project, n := range queues {
		queued += n
		if named {
			ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(n), project)
		}
	}
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(queued))
	// Open shells on every replica, as the store holds them.
	attachments := 0
	for _, sess := range active {
		if sess.State == sdk.StateRunning {
			attachments += sess.Attachments
		}
	}
	ch <- prometheus.MustNewConstMetric(descAttachments, prometheus.GaugeValue, float64(attachments))
	if !named {
		return nil
	}
	budgets, err := s.budgets(ctx)
	if err != nil {
		return err
	}
	for _, b := range budgets {
		ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, b.percent/100, b.project.Name)
	}
	return nil
}
