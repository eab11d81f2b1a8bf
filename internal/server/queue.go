package server

// waiter is one request queued for GPUs. kick wakes it to look again.
type waiter struct {
	project string
	kick    chan struct{}
}

// queue is the FIFO of waiting requests of one project, and the reason
// its head waits (shown to everyone behind it).
type queue struct {
	waiters []*waiter
	reason  string
}

func (s *Server) enqueue(project string) *waiter {
	w := &waiter{project: project, kick: make(chan struct{}, 1)}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	q := s.queues[project]
	if q == nil {
		q = &queue{}
		s.queues[project] = q
	}
	q.waiters = append(q.waiters, w)
	return w
}

// dequeue removes the waiter, admitted or not, and wakes the others: their
// positions changed, and the new head may fit.
func (s *Server) dequeue(w *waiter) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	q := s.queues[w.project]
	if q == nil {
		return
	}
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			break
		}
	}
	if len(q.waiters) == 0 {
		delete(s.queues, w.project)
		return
	}
	for _, x := range q.waiters {
		wake(x)
	}
}

// position is the waiter's 1-based place in its project's queue.
func (s *Server) position(w *waiter) int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if q := s.queues[w.project]; q != nil {
		for i, x := range q.waiters {
			if x == w {
				return i + 1
			}
		}
	}
	return 0
}

func (s *Server) queueLength(project string) int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if q := s.queues[project]; q != nil {
		return len(q.waiters)
	}
	return 0
}

// QueueLengths reports the waiting requests per project.
func (s *Server) QueueLengths() map[string]int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	out := map[string]int{}
	for p, q := range s.queues {
		out[p] = len(q.waiters)
	}
	return out
}

func (s *Server) setQueueReason(project, reason string) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if q := s.queues[project]; q != nil {
		q.reason = reason
	}
}

func (s *Server) queueReason(project string) string {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if q := s.queues[project]; q != nil && q.reason != "" {
		return q.reason
	}
	return "waiting for a GPU"
}

// kickQueues wakes every waiter: capacity or policy changed.
func (s *Server) kickQueues() {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	for _, q := range s.queues {
		for _, w := range q.waiters {
			wake(w)
		}
	}
}

func wake(w *waiter) {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}
