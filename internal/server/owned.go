package server

// Every goroutine the server starts has an owner that waits for it: the
// lifecycle loops and the background work started on their behalf (a
// refill of warm pools after a claim) belong to the Server, whose Close
// returns only once they have all stopped; a tunnel's helpers belong to
// the handler that serves it, and the tunnel handler itself is counted
// like background work, so that Close waits for it too. Nothing runs
// after Close: no session is started in the runtime and nothing is
// written to the store once Close has returned.

// goOwned runs fn on a goroutine that Close waits for, and reports true;
// once Close has begun it runs nothing and reports false. fn should watch
// s.ctx, which Close cancels.
func (s *Server) goOwned(fn func()) bool {
	if !s.enter() {
		return false
	}
	go func() {
		defer s.leave()
		fn()
	}()
	return true
}

// enter counts work that Close must wait for (a tunnel being served),
// and reports false once Close has begun; leave ends it.
func (s *Server) enter() bool {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *Server) leave() { s.wg.Done() }

// stopOwned makes enter refuse new work, cancels s.ctx and waits for the
// work already counted to stop.
func (s *Server) stopOwned() {
	s.ownMu.Lock()
	s.closing = true
	s.ownMu.Unlock()
	s.cancel()
	s.wg.Wait()
}
