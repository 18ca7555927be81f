// Parking (the Block policy). A Put that does not fit is not answered: it
// waits in s.parked, and so does every Put after it while any waits, so
// that waiting never lets a later message overtake an earlier one (G3: a
// pipelining producer's messages are stored in the order it sent them).
// After a commit that freed space the parked Puts are retried in order;
// the first that still does not fit stops the rest. A parked Put is
// answered ErrFull when it has waited BlockTimeout.

package spool

import (
	"fmt"
	"time"
)

// unpark retries the parked Puts after space was freed.
func (s *Spool) unpark() {
	if len(s.parked) == 0 || !s.parkedFreed {
		return
	}
	s.parkedFreed = false
	batch := s.parked
	s.parked = nil
	s.unparking = true
	s.commit(batch)
	s.unparking = false
}

// expireParked answers the Puts that waited BlockTimeout. Deadlines grow
// along the queue, so only its head needs looking at.
func (s *Spool) expireParked() {
	s.pruneParked()
	now := time.Now()
	n := 0
	for n < len(s.parked) && !now.Before(s.parked[n].deadline) {
		n++
	}
	if n > 0 {
		s.answerParked(n, fmt.Errorf("%w (waited %s for space)", ErrFull, s.opts.BlockTimeout), true)
	}
}

// answerParked answers the first n parked Puts with err (those not
// withdrawn meanwhile), counting them as rejected when reject is set
// (before they are answered, so that their callers see the count).
func (s *Spool) answerParked(n int, err error, reject bool) {
	var answer []*op
	for _, o := range s.parked[:n] {
		if o.claim() {
			answer = append(answer, o)
		}
	}
	s.parked = append(s.parked[:0], s.parked[n:]...)
	if reject && len(answer) > 0 {
		s.mu.Lock()
		s.ctr.rejected += uint64(len(answer))
		s.mu.Unlock()
	}
	for _, o := range answer {
		o.err = err
		close(o.done)
	}
}

// pruneParked drops the parked Puts their callers withdrew. When the head
// goes, the ones behind it may fit now: they are retried.
func (s *Spool) pruneParked() {
	kept := s.parked[:0]
	for i, o := range s.parked {
		if o.state.Load() == opWithdrawn {
			if i == 0 || len(kept) == 0 {
				s.parkedFreed = true
			}
			continue
		}
		kept = append(kept, o)
	}
	clear(s.parked[len(kept):])
	s.parked = kept
}
