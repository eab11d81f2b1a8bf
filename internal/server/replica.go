package server

// Replica names this server process among the replicas that share one
// store: its id, and the URL at which the other replicas reach it (for
// relays to agents linked here).
type Replica struct {
	ID  string
	URL string
}

// replicaID is this process's replica id.
func (s *Server) replicaID() string { return s.cfg.Replica.ID }
