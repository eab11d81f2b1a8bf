package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
)

// readiness is the /readyz document: this replica answers requests.
type readiness struct {
	Ready   bool   `json:"ready"`
	Leader  bool   `json:"leader"`
	Replica string `json:"replica"`
}

// readyTimeout bounds the store's answer to the readiness probe.
const readyTimeout = time.Second

// readyz answers 200 while the store answers a trivial query within
// readyTimeout and this replica is registered in it (a replica declared
// dead re-registers at its next heartbeat), and says whether it leads;
// 503 otherwise, so that a load balancer sends requests elsewhere.
// /healthz (storehealth.go) says whether the store writes.
func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	replicas, err := a.s.store.ListReplicas(ctx)
	if err != nil {
		a.log.Warn("readiness: the store did not answer", "err", err)
		httpapi.WriteError(w, r, a.log, httpapi.Errorf(http.StatusServiceUnavailable,
			"not ready: the database did not answer within %s; this replica is ready again once it does", readyTimeout))
		return
	}
	registered := false
	for _, rep := range replicas {
		registered = registered || rep.ID == a.s.replicaID()
	}
	if !registered {
		httpapi.WriteError(w, r, a.log, httpapi.Errorf(http.StatusServiceUnavailable,
			"not ready: replica %s is not registered in the database (declared dead while cut off); it registers again at its next heartbeat", a.s.replicaID()))
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
