package stomp

import (
	"strings"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"
)

// FuzzNegotiate checks version negotiation against its definition: no
// accept-version header is 1.0; otherwise the highest of the listed
// versions the server speaks (1.0, 1.1, 1.2; spaces around a version are
// ignored), or none. The same header is then sent in a CONNECT to a real
// server, which must answer CONNECTED with that version, or an ERROR that
// lists the versions it speaks.
func FuzzNegotiate(f *testing.F) {
	for _, s := range []string{"1.2", "1.0,1.1,1.2", "1.1, 1.0", " 1.2 ", "2.0", "", ",", "1.2,1.2", "1.10", "1.0,,x", "1.1\t"} {
		f.Add(true, s)
	}
	f.Add(false, "")
	_, addr := startServer(f, testOptions{})
	f.Fuzz(func(t *testing.T, present bool, av string) {
		h := frame.NewHeader()
		if present {
			h.Add(frame.AcceptVersion, av)
		}
		got, ok := negotiate(h)
		want, wantOK := V10, !present
		if present {
			for _, tok := range strings.Split(av, ",") {
				var v Version
				switch strings.TrimSpace(tok) {
				case "1.0":
					v = V10
				case "1.1":
					v = V11
				case "1.2":
					v = V12
				default:
					continue
				}
				if !wantOK || v > want {
					want, wantOK = v, true
				}
			}
		}
		if ok != wantOK || ok && got != want {
			t.Fatalf("accept-version %q (present %v): negotiate = %v %v, want %v %v", av, present, got, ok, want, wantOK)
		}

		if strings.ContainsAny(av, "\r\n\x00") || len(av) > 1024 {
			return // cannot be a header value of a CONNECT frame
		}
		c := dialRaw(t, addr)
		hdr := []string{frame.Host, "x"}
		if present {
			hdr = append(hdr, frame.AcceptVersion, av)
		}
		c.send(frame.New(frame.CONNECT, hdr...))
		fr := c.next()
		switch {
		case wantOK && fr.Command == frame.CONNECTED:
			if present && fr.Header.Get(frame.Version) != want.String() {
				t.Fatalf("accept-version %q: CONNECTED version %q, want %s", av, fr.Header.Get(frame.Version), want)
			}
		case !wantOK && fr.Command == frame.ERROR:
			if fr.Header.Get(frame.Version) != "1.0,1.1,1.2" {
				t.Fatalf("accept-version %q: ERROR without the supported versions: %v", av, headerList(fr))
			}
		default:
			t.Fatalf("accept-version %q (present %v): got %s %v", av, present, fr.Command, headerList(fr))
		}
		_ = c.nc.Close()
	})
}
