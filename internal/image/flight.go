package image

import (
	"context"
	"sync"
)

// flight is one download and unpack of an image that every concurrent Pull
// of that image waits for. It runs detached from any one caller and is
// cancelled when its last waiter gives up.
type flight struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiters int // guarded by Store.mu
	img     Image
	err     error

	mu          sync.Mutex
	subs        map[int]ProgressFunc
	next        int
	last, total int64
	reported    bool
}

// share runs fn once for key among the callers that ask for it concurrently.
func (s *Store) share(ctx context.Context, key string, progress ProgressFunc, fn func(context.Context, ProgressFunc) (Image, error)) (Image, error) {
	s.mu.Lock()
	f, ok := s.flights[key]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel, subs: map[int]ProgressFunc{}}
		s.flights[key] = f
		go func() {
			defer cancel()
			img, err := fn(fctx, f.report)
			s.mu.Lock()
			if s.flights[key] == f {
				delete(s.flights, key)
			}
			s.mu.Unlock()
			f.img, f.err = img, err
			close(f.done)
		}()
	}
	f.waiters++
	s.mu.Unlock()
	id := f.subscribe(progress)
	defer f.unsubscribe(id)

	select {
	case <-f.done:
		return f.img, f.err
	case <-ctx.Done():
		s.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if s.flights[key] == f {
				delete(s.flights, key) // the next caller starts afresh
			}
		}
		s.mu.Unlock()
		return Image{}, ctx.Err()
	}
}

func (f *flight) subscribe(p ProgressFunc) int {
	if p == nil {
		return -1
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := f.next
	f.next++
	f.subs[id] = p
	if f.reported {
		p(f.last, f.total)
	}
	return id
}

func (f *flight) unsubscribe(id int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, id)
}

func (f *flight) report(done, total int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last, f.total, f.reported = done, total, true
	for _, p := range f.subs {
		p(done, total)
	}
}
