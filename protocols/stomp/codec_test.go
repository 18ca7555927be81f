package stomp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/go-stomp/stomp/v3/frame"
)

// goldenLimits are small so that the limit cases stay readable.
var goldenLimits = Limits{MaxBody: 16, MaxHeaders: 4, MaxLine: 32}

func fr(cmd string, body string, hdr ...string) *frame.Frame {
	f := frame.New(cmd, hdr...)
	if body != "" {
		f.Body = []byte(body)
	}
	return f
}

// goldenFrames: raw input -> the frames Read returns (nil: a heart-beat),
// then the error that ends the input (io.EOF when it ends cleanly).
var goldenFrames = []struct {
	name string
	v    Version
	in   string
	want []*frame.Frame
	err  error
}{
	{"send", V12, "SEND\ndestination:/queue/a\n\nhello\x00", []*frame.Frame{fr("SEND", "hello", "destination", "/queue/a")}, io.EOF},
	{"crlf", V12, "SEND\r\ndestination:/queue/a\r\nreceipt:7\r\n\r\nhi\x00\r\n", []*frame.Frame{fr("SEND", "hi", "destination", "/queue/a", "receipt", "7"), nil}, io.EOF},
	{"empty body", V11, "DISCONNECT\nreceipt:1\n\n\x00", []*frame.Frame{fr("DISCONNECT", "", "receipt", "1")}, io.EOF},
	{"content-length with NULs", V11, "SEND\ncontent-length:5\n\na\x00b\x00c\x00", []*frame.Frame{fr("SEND", "a\x00b\x00c", "content-length", "5")}, io.EOF},
	{"content-length zero", V11, "SEND\ncontent-length:0\n\n\x00", []*frame.Frame{fr("SEND", "", "content-length", "0")}, io.EOF},
	{"heart-beats between frames", V12, "\n\r\nACK\nid:1\n\n\x00\n\nNACK\nid:2\n\n\x00", []*frame.Frame{nil, nil, fr("ACK", "", "id", "1"), nil, nil, fr("NACK", "", "id", "2")}, io.EOF},
	{"escapes 1.1", V11, "SEND\na\\cb:c\\nd\\\\\n\n\x00", []*frame.Frame{fr("SEND", "", "a:b", "c\nd\\")}, io.EOF},
	{"escapes 1.2 with cr", V12, "SEND\nk:x\\ry\n\n\x00", []*frame.Frame{fr("SEND", "", "k", "x\ry")}, io.EOF},
	{"no escapes in 1.0", V10, "SEND\nk:c\\nd\\t\n\n\x00", []*frame.Frame{fr("SEND", "", "k", "c\\nd\\t")}, io.EOF},
	{"CONNECT never unescaped", V12, "CONNECT\nlogin:a\\cb\n\n\x00", []*frame.Frame{fr("CONNECT", "", "login", "a\\cb")}, io.EOF},
	{"value with colons", V10, "SEND\ndestination:/a:b:c\n\n\x00", []*frame.Frame{fr("SEND", "", "destination", "/a:b:c")}, io.EOF},
	{"repeated header kept", V12, "SEND\nk:1\nk:2\n\n\x00", []*frame.Frame{fr("SEND", "", "k", "1", "k", "2")}, io.EOF},
	{"empty value", V12, "SEND\nk:\n\n\x00", []*frame.Frame{fr("SEND", "", "k", "")}, io.EOF},
	{"server frames parse", V12, "RECEIPT\nreceipt-id:1\n\n\x00MESSAGE\ndestination:/topic/a\n\nm\x00", []*frame.Frame{fr("RECEIPT", "", "receipt-id", "1"), fr("MESSAGE", "m", "destination", "/topic/a")}, io.EOF},

	{"escape \\r in 1.1", V11, "SEND\nk:x\\ry\n\n\x00", nil, ErrMalformedFrame},
	{"undefined escape", V12, "SEND\nk:x\\ty\n\n\x00", nil, ErrMalformedFrame},
	{"lone backslash", V12, "SEND\nk:x\\\n\n\x00", nil, ErrMalformedFrame},
	{"unknown command", V12, "FOO\n\n\x00", nil, ErrMalformedFrame},
	{"lower-case command", V12, "send\n\n\x00", nil, ErrMalformedFrame},
	{"binary garbage", V12, "\x00\x01\x02\n\n\x00", nil, ErrMalformedFrame},
	{"header without colon", V12, "SEND\nnocolon\n\n\x00", nil, ErrMalformedFrame},
	{"empty header name", V12, "SEND\n:v\n\n\x00", nil, ErrMalformedFrame},
	{"content-length negative", V12, "SEND\ncontent-length:-1\n\n\x00", nil, ErrMalformedFrame},
	{"content-length not a number", V12, "SEND\ncontent-length:abc\n\n\x00", nil, ErrMalformedFrame},
	{"content-length empty", V12, "SEND\ncontent-length:\n\n\x00", nil, ErrMalformedFrame},
	{"no NUL after content-length", V12, "SEND\ncontent-length:2\n\nabc\x00", nil, ErrMalformedFrame},
	{"CR without LF between frames", V12, "\rX", nil, ErrMalformedFrame},
	{"content-length over limit", V12, "SEND\ncontent-length:17\n\n", nil, ErrFrameTooLarge},
	{"content-length huge", V12, "SEND\ncontent-length:99999999999999\n\n", nil, ErrFrameTooLarge},
	{"body over limit", V12, "SEND\n\n" + strings.Repeat("x", 17) + "\x00", nil, ErrFrameTooLarge},
	{"body at limit", V12, "SEND\n\n" + strings.Repeat("x", 16) + "\x00", []*frame.Frame{fr("SEND", strings.Repeat("x", 16))}, io.EOF},
	{"too many headers", V12, "SEND\na:1\nb:2\nc:3\nd:4\ne:5\n\n\x00", nil, ErrTooManyHeaders},
	{"headers at limit", V12, "SEND\na:1\nb:2\nc:3\nd:4\n\n\x00", []*frame.Frame{fr("SEND", "", "a", "1", "b", "2", "c", "3", "d", "4")}, io.EOF},
	{"header line too long", V12, "SEND\nk:" + strings.Repeat("v", 31) + "\n\n\x00", nil, ErrLineTooLong},
	{"command line too long", V12, strings.Repeat("S", 40) + "\n\n\x00", nil, ErrLineTooLong},
	{"endless line", V12, strings.Repeat("S", 5000), nil, ErrLineTooLong},
	{"truncated headers", V12, "SEND\ndestination:/q", nil, io.ErrUnexpectedEOF},
	{"truncated body", V12, "SEND\n\nabc", nil, io.ErrUnexpectedEOF},
	{"truncated content-length body", V12, "SEND\ncontent-length:5\n\nab", nil, io.ErrUnexpectedEOF},
	{"truncated after CR", V12, "\r", nil, io.ErrUnexpectedEOF},
}

func readAll(r *Reader) ([]*frame.Frame, error) {
	var out []*frame.Frame
	for range 1000 {
		f, err := r.Read()
		if err != nil {
			return out, err
		}
		out = append(out, f)
	}
	return out, errors.New("too many frames")
}

func TestReaderGolden(t *testing.T) {
	for _, tc := range goldenFrames {
		t.Run(tc.name, func(t *testing.T) {
			for _, split := range []string{"whole", "byte-by-byte"} {
				var src io.Reader = strings.NewReader(tc.in)
				if split != "whole" {
					src = iotest.OneByteReader(src)
				}
				r := NewReader(src, goldenLimits)
				r.SetVersion(tc.v)
				got, err := readAll(r)
				if !errors.Is(err, tc.err) {
					t.Fatalf("%s: error %v, want %v", split, err, tc.err)
				}
				if !equalFrames(got, tc.want) {
					t.Fatalf("%s: frames\n got %s\nwant %s", split, dump(got), dump(tc.want))
				}
			}
		})
	}
}

func equalFrames(a, b []*frame.Frame) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if (a[i] == nil) != (b[i] == nil) {
			return false
		}
		if a[i] == nil {
			continue
		}
		if a[i].Command != b[i].Command || !bytes.Equal(a[i].Body, b[i].Body) || !reflect.DeepEqual(headerList(a[i]), headerList(b[i])) {
			return false
		}
	}
	return true
}

func headerList(f *frame.Frame) []string {
	var out []string
	for i := range f.Header.Len() {
		k, v := f.Header.GetAt(i)
		out = append(out, k, v)
	}
	return out
}

func dump(fs []*frame.Frame) string {
	var sb strings.Builder
	for _, f := range fs {
		if f == nil {
			sb.WriteString("[heart-beat] ")
			continue
		}
		fmt.Fprintf(&sb, "[%s %q %q] ", f.Command, headerList(f), f.Body)
	}
	return sb.String()
}

// tricky header values for the round trips.
var trickyValues = []string{"", "plain", "a:b", "line\nbreak", "back\\slash", "\\n literal", "tab\there", "ünïcødé", "cr\rin", "::\n\n\\\\"}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, v := range []Version{V10, V11, V12} {
		for _, val := range trickyValues {
			for _, key := range []string{"k", "key:colon", "key\nnl"} {
				f := fr(frame.MESSAGE, "body\x00with\x00nuls", key, val, frame.ContentLength, "14")
				wire := AppendFrame(nil, f, v)
				r := NewReader(bytes.NewReader(wire), Limits{})
				r.SetVersion(v)
				got, err := readAll(r)
				if !errors.Is(err, io.EOF) || len(got) != 1 || got[0] == nil {
					t.Fatalf("v%s %q=%q: decode: %v %s", v, key, val, err, dump(got))
				}
				wantKey, wantVal, kept := key, val, true
				switch {
				case v == V10:
					// No escaping in 1.0: keys with ':' or EOLs are
					// dropped, EOLs in values become spaces.
					kept = !strings.ContainsAny(key, ":\r\n")
					wantVal = strings.NewReplacer("\r", " ", "\n", " ").Replace(val)
				case v == V11 && strings.Contains(val, "\r"):
					// 1.1 cannot escape CR; it travels raw and is kept
					// unless it ends the line.
				}
				gotVal, ok := got[0].Header.Contains(wantKey)
				if ok != kept || (kept && gotVal != wantVal) {
					t.Errorf("v%s %q=%q: got %q (present %v), want %q (present %v)", v, key, val, gotVal, ok, wantVal, kept)
				}
				if string(got[0].Body) != "body\x00with\x00nuls" {
					t.Errorf("v%s: body %q", v, got[0].Body)
				}
			}
		}
	}
}

func TestReaderContentLengthOverflow(t *testing.T) {
	r := NewReader(strings.NewReader("SEND\ncontent-length:99999999999999999999999\n\n"), Limits{})
	if _, err := r.Read(); !errors.Is(err, ErrMalformedFrame) {
		t.Fatalf("got %v, want ErrMalformedFrame", err)
	}
}

func TestEncodeConnectedNeverEscaped(t *testing.T) {
	f := frame.New(frame.CONNECTED, "session", "a:b\\c", "version", "1.2")
	got := string(AppendFrame(nil, f, V12))
	if want := "CONNECTED\nsession:a:b\\c\nversion:1.2\n\n\x00"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := string(AppendFrame(nil, nil, V12)); got != "\n" {
		t.Fatalf("heart-beat: %q", got)
	}
}

// FuzzDecodeFrame feeds arbitrary input to the Reader, whole and one byte
// at a time: it must never panic, never exceed its limits, give the same
// result however the input is split, and every frame it returns must
// survive an encode -> decode round trip.
func FuzzDecodeFrame(f *testing.F) {
	for _, tc := range goldenFrames {
		f.Add([]byte(tc.in), byte(tc.v))
	}
	f.Fuzz(func(t *testing.T, data []byte, vb byte) {
		v := Version(vb % 3)
		decode := func(src io.Reader) ([]*frame.Frame, error) {
			r := NewReader(src, goldenLimits)
			r.SetVersion(v)
			return readAll(r)
		}
		whole, werr := decode(bytes.NewReader(data))
		bytewise, berr := decode(iotest.OneByteReader(bytes.NewReader(data)))
		if !equalFrames(whole, bytewise) || fmt.Sprint(werr) != fmt.Sprint(berr) {
			t.Fatalf("split changes the result:\nwhole %s %v\nbytes %s %v", dump(whole), werr, dump(bytewise), berr)
		}
		for _, fr := range whole {
			if fr == nil {
				continue
			}
			if len(fr.Body) > goldenLimits.MaxBody || fr.Header.Len() > goldenLimits.MaxHeaders {
				t.Fatalf("limits exceeded: %s", dump([]*frame.Frame{fr}))
			}
			if v == V10 || fr.Command == frame.CONNECT || fr.Command == frame.STOMP || fr.Command == frame.CONNECTED {
				continue // no escaping: not every value can be written back
			}
			if v == V11 && strings.Contains(strings.Join(headerList(fr), ""), "\r") {
				continue // 1.1 cannot escape CR
			}
			if _, ok := fr.Header.Contains(frame.ContentLength); !ok && bytes.IndexByte(fr.Body, 0) >= 0 {
				t.Fatalf("NUL in a body without content-length: %q", fr.Body)
			}
			// Escaping can double a line: decode with room for that.
			lim := goldenLimits
			lim.MaxLine *= 2
			r := NewReader(bytes.NewReader(AppendFrame(nil, fr, v)), lim)
			r.SetVersion(v)
			again, err := r.Read()
			if err != nil || !equalFrames([]*frame.Frame{again}, []*frame.Frame{fr}) {
				t.Fatalf("round trip: %v\n in %s\nout %s", err, dump([]*frame.Frame{fr}), dump([]*frame.Frame{again}))
			}
		}
	})
}

// TestWriteFuzzSeeds writes the golden inputs as the seed corpus of
// FuzzDecodeFrame (FERRY_WRITE_FUZZ_SEEDS=1 go test -run WriteFuzzSeeds).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("FERRY_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set FERRY_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzDecodeFrame")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeFrame")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, tc := range goldenFrames {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbyte(%d)\n", tc.in, tc.v)
		name := fmt.Sprintf("golden-%02d-%s", i, strings.NewReplacer(" ", "-", "\\", "", "/", "").Replace(tc.name))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
