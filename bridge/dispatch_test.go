package bridge

import "testing"

func TestNext(t *testing.T) {
	up := slot{up: true, window: 4, ramp: 1}
	with := func(f func(*slot)) slot { s := up; f(&s); return s }
	for _, tc := range []struct {
		name string
		s    slot
		want step
	}{
		{"room", up, stepSend},
		{"window full", with(func(s *slot) { s.inFlight = 4 }), stepWait},
		{"down", with(func(s *slot) { s.up = false }), stepDown},
		{"blocked wins over down", with(func(s *slot) { s.up, s.blocked = false, true }), stepReturn},
		{"blocked", with(func(s *slot) { s.blocked, s.inFlight = true, 1 }), stepReturn},
		{"after suspects", with(func(s *slot) { s.inFlight, s.suspectsInFlight = 1, 1 }), stepWait},
		{"suspect, idle link", with(func(s *slot) { s.suspect = true }), stepProbe},
		{"suspect behind traffic", with(func(s *slot) { s.suspect, s.inFlight = true, 2 }), stepWait},
		{"suspect, group full", with(func(s *slot) { s.suspect, s.inFlight, s.suspectsInFlight = true, 1, 1 }), stepWait},
		{"suspect joins group", with(func(s *slot) { s.suspect, s.inFlight, s.suspectsInFlight, s.ramp = true, 1, 1, 2 }), stepSend},
		{"suspect, group of 4 full", with(func(s *slot) { s.suspect, s.inFlight, s.suspectsInFlight, s.ramp = true, 4, 4, 8 }), stepWait},
		{"suspect, ramp 0 is 1", with(func(s *slot) { s.suspect, s.ramp = true, 0 }), stepProbe},
		{"suspect, down", with(func(s *slot) { s.suspect, s.up = true, false }), stepDown},
	} {
		if got := next(tc.s); got != tc.want {
			t.Errorf("%s: next(%+v) = %v, want %v", tc.name, tc.s, got, tc.want)
		}
	}
}
