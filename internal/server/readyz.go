package server

import (
	"context"
	"errors"
	"net/http"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
)

// readiness is the /readyz document: this replica answers requests.
type readiness struct {
	Ready   bool   `json:"ready"`
	Leader  bool   `json:"leader"`
	Replica string `json:"replica"`
}

// readyz answers 200 while this replica is registered in the store and
// its last registration or heartbeat is at most two heartbeat intervals
// old (a replica declared dead re-registers at its next heartbeat), and
// says whether it leads; 503 otherwise, so that a load balancer sends
// requests elsewhere. It answers from what the heartbeat loop keeps, with
// no store call: the probe is unauthenticated and must not load the
// database. /healthz (storehealth.go) says whether the store writes.
func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	if !a.s.readyNow() {
		httpapi.WriteError(w, r, a.log, httpapi.Errorf(http.StatusServiceUnavailable,
			"not ready: replica %s has not recorded a heartbeat in the database within %s (cut off, or declared dead); it is ready again once its heartbeat reaches the database",
			a.s.replicaID(), 2*a.s.cfg.HeartbeatInterval))
		return
	}
	httpapi.Write(w, http.StatusOK, readiness{Ready: true, Leader: a.s.IsLeader(), Replica: a.s.replicaID()})
}

// errDatabaseUnreachable is what a request that failed on an unreachable
// store answers, instead of an internal error.
func errDatabaseUnreachable(err error) error {
	return &httpapi.Error{Status: http.StatusServiceUnavailable, Msg: "the database is unreachable; try again in a moment", Err: err}
}

// storeUnreachable reports whether err is the store being out of reach
// (store.ErrUnavailable) or too slow to answer (a deadline on a store
// call), rather than an answer or a bug.
func storeUnreachable(err error) bool {
	var he *httpapi.Error
	if errors.As(err, &he) {
		return false // an answer for the client already
	}
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)
}
