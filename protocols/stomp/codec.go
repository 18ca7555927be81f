package stomp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/go-stomp/stomp/v3/frame"
)

// Version is a STOMP protocol version.
type Version uint8

// Supported protocol versions. The zero Version is 1.0, the version of a
// client that sends no accept-version header.
const (
	V10 Version = iota
	V11
	V12
)

func (v Version) String() string {
	switch v {
	case V10:
		return "1.0"
	case V11:
		return "1.1"
	case V12:
		return "1.2"
	}
	return "unknown"
}

// Codec errors. Read wraps them with detail; compare with errors.Is.
var (
	// ErrMalformedFrame: the input is not a STOMP frame (unknown command,
	// header line without a colon, bad escape, bad content-length, missing
	// NUL terminator).
	ErrMalformedFrame = errors.New("stomp: malformed frame")
	// ErrFrameTooLarge: the body is longer than Limits.MaxBody (by its
	// content-length or by the bytes read so far).
	ErrFrameTooLarge = errors.New("stomp: frame too large")
	// ErrTooManyHeaders: more than Limits.MaxHeaders header lines.
	ErrTooManyHeaders = errors.New("stomp: too many headers")
	// ErrLineTooLong: a command or header line is longer than
	// Limits.MaxLine bytes.
	ErrLineTooLong = errors.New("stomp: header line too long")
)

// Limits bound what a Reader accepts. Zero fields take the defaults below.
type Limits struct {
	MaxBody    int // body bytes; default 1 MiB
	MaxHeaders int // header lines; default 64
	MaxLine    int // bytes in the command or one header line, EOL excluded; default 8 KiB
	// MaxFrame, when not 0, bounds the whole frame: command, header lines
	// and body together (the server reads CONNECT, before the login, with
	// a small one).
	MaxFrame int
}

// Default limits.
const (
	DefaultMaxBody    = 1 << 20
	DefaultMaxHeaders = 64
	DefaultMaxLine    = 8 << 10
)

func (l Limits) withDefaults() Limits {
	if l.MaxBody <= 0 {
		l.MaxBody = DefaultMaxBody
	}
	if l.MaxHeaders <= 0 {
		l.MaxHeaders = DefaultMaxHeaders
	}
	if l.MaxLine <= 0 {
		l.MaxLine = DefaultMaxLine
	}
	return l
}

// Reader reads STOMP frames with bounded memory: no line, header count or
// body can make it allocate beyond its Limits, whatever content-length
// claims. It accepts LF and CRLF line ends in every version (1.2 defines
// CRLF; being lenient costs nothing). A Reader is not safe for concurrent
// use.
type Reader struct {
	br      *bufio.Reader
	lim     Limits
	version Version
	used    int // bytes of the current frame, counted against lim.MaxFrame

	// FrameStarted, when set, is called once the first byte of a frame
	// (not a heart-beat EOL) has been read, before the rest of it. The
	// server uses it to switch from the idle (heart-beat) read deadline
	// to the frame deadline.
	FrameStarted func()
}

// NewReader returns a Reader of r that unescapes headers as version 1.0
// until SetVersion is called.
func NewReader(r io.Reader, lim Limits) *Reader {
	lim = lim.withDefaults()
	// The buffer holds a whole line, so ReadSlice can bound it.
	return &Reader{br: bufio.NewReaderSize(r, max(4096, lim.MaxLine+2)), lim: lim}
}

// SetLimits replaces the limits for the frames read from now on. Lines
// are never longer than the limits the Reader was made with.
func (r *Reader) SetLimits(lim Limits) {
	lim = lim.withDefaults()
	lim.MaxLine = min(lim.MaxLine, r.br.Size()-2)
	r.lim = lim
}

// SetVersion sets the version whose header escaping Read undoes: none for
// 1.0; \n \c \\ for 1.1; and \r for 1.2. CONNECT, STOMP and CONNECTED frames
// are never unescaped.
func (r *Reader) SetVersion(v Version) { r.version = v }

// Buffered reports how many bytes are buffered and not yet read.
func (r *Reader) Buffered() int { return r.br.Buffered() }

var knownCommands = map[string]string{}

func init() {
	for _, c := range []string{
		frame.CONNECT, frame.STOMP, frame.CONNECTED, frame.SEND, frame.SUBSCRIBE, frame.UNSUBSCRIBE,
		frame.ACK, frame.NACK, frame.BEGIN, frame.COMMIT, frame.ABORT, frame.DISCONNECT,
		frame.MESSAGE, frame.RECEIPT, frame.ERROR,
	} {
		knownCommands[c] = c
	}
}

// Read reads one frame. A heart-beat (an EOL between frames) returns a nil
// frame and a nil error. At the end of input between frames Read returns
// io.EOF; inside a frame, io.ErrUnexpectedEOF. Other errors wrap the
// package's sentinel errors or come from the underlying reader.
func (r *Reader) Read() (*frame.Frame, error) {
	b, err := r.br.ReadByte()
	if err != nil {
		return nil, err
	}
	switch b {
	case '\n':
		return nil, nil
	case '\r':
		b, err = r.br.ReadByte()
		if err != nil {
			return nil, eof(err)
		}
		if b != '\n' {
			return nil, fmt.Errorf("%w: CR not followed by LF between frames", ErrMalformedFrame)
		}
		return nil, nil
	}
	_ = r.br.UnreadByte()
	r.used = 0
	if r.FrameStarted != nil {
		r.FrameStarted()
	}
	line, err := r.line()
	if err != nil {
		return nil, err
	}
	cmd, ok := knownCommands[string(line)]
	if !ok {
		return nil, fmt.Errorf("%w: unknown command %s", ErrMalformedFrame, quoteTrunc(line))
	}
	f := &frame.Frame{Command: cmd, Header: &frame.Header{}}
	unescape := r.version >= V11 && cmd != frame.CONNECT && cmd != frame.STOMP && cmd != frame.CONNECTED
	for n := 0; ; n++ {
		line, err := r.line()
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			break
		}
		if n >= r.lim.MaxHeaders {
			return nil, fmt.Errorf("%w: more than %d", ErrTooManyHeaders, r.lim.MaxHeaders)
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			return nil, fmt.Errorf("%w: header line %s has no name or no colon", ErrMalformedFrame, quoteTrunc(line))
		}
		k, v := string(line[:i]), string(line[i+1:])
		if unescape {
			if k, err = unescapeHeader(k, r.version); err != nil {
				return nil, err
			}
			if v, err = unescapeHeader(v, r.version); err != nil {
				return nil, err
			}
		}
		f.Header.Add(k, v)
	}
	if f.Body, err = r.body(f.Header); err != nil {
		return nil, err
	}
	return f, nil
}

func (r *Reader) body(h *frame.Header) ([]byte, error) {
	maxBody := r.lim.MaxBody
	if r.lim.MaxFrame > 0 {
		maxBody = min(maxBody, max(0, r.lim.MaxFrame-r.used))
	}
	if cl, ok := h.Contains(frame.ContentLength); ok {
		n, err := strconv.ParseUint(cl, 10, 63)
		if err != nil {
			return nil, fmt.Errorf("%w: content-length %s is not a non-negative integer", ErrMalformedFrame, quoteTrunc([]byte(cl)))
		}
		if n > uint64(maxBody) {
			return nil, fmt.Errorf("%w: content-length %d exceeds the limit of %d bytes", ErrFrameTooLarge, n, maxBody)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r.br, body); err != nil {
			return nil, eof(err)
		}
		t, err := r.br.ReadByte()
		if err != nil {
			return nil, eof(err)
		}
		if t != 0 {
			return nil, fmt.Errorf("%w: no NUL after content-length bytes of body", ErrMalformedFrame)
		}
		if n == 0 {
			return nil, nil
		}
		return body, nil
	}
	var body []byte
	for {
		chunk, err := r.br.ReadSlice(0)
		if len(body)+len(chunk) > maxBody+1 {
			return nil, fmt.Errorf("%w: body exceeds the limit of %d bytes", ErrFrameTooLarge, maxBody)
		}
		body = append(body, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, eof(err)
		}
	}
	if len(body) == 1 {
		return nil, nil
	}
	return body[:len(body)-1], nil
}

// line returns the next line without its EOL. The slice is valid until the
// next read.
func (r *Reader) line() ([]byte, error) {
	b, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(b) > r.lim.MaxLine+2 {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrLineTooLong, r.lim.MaxLine)
	}
	if err != nil {
		return nil, eof(err)
	}
	if r.used += len(b); r.lim.MaxFrame > 0 && r.used > r.lim.MaxFrame {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrFrameTooLarge, r.lim.MaxFrame)
	}
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	if len(b) > r.lim.MaxLine {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrLineTooLong, r.lim.MaxLine)
	}
	return b, nil
}

func eof(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func quoteTrunc(b []byte) string {
	const n = 40
	if len(b) > n {
		return strconv.Quote(string(b[:n])) + "…"
	}
	return strconv.Quote(string(b))
}

func unescapeHeader(s string, v Version) (string, error) {
	i := strings.IndexByte(s, '\\')
	if i < 0 {
		return s, nil
	}
	var sb strings.Builder
	sb.Grow(len(s))
	sb.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			sb.WriteByte(c)
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%w: header ends in a lone backslash", ErrMalformedFrame)
		}
		i++
		switch s[i] {
		case 'n':
			sb.WriteByte('\n')
		case 'c':
			sb.WriteByte(':')
		case '\\':
			sb.WriteByte('\\')
		case 'r':
			if v < V12 {
				return "", fmt.Errorf("%w: escape \\r is undefined before STOMP 1.2", ErrMalformedFrame)
			}
			sb.WriteByte('\r')
		default:
			return "", fmt.Errorf("%w: undefined escape sequence %q", ErrMalformedFrame, s[i-1:i+1])
		}
	}
	return sb.String(), nil
}

// AppendFrame appends the wire form of f for a peer speaking version v and
// returns the extended slice. A nil f is a heart-beat (one LF).
//
// Escaping follows v: 1.2 escapes \r \n : and \; 1.1 the same except \r;
// 1.0 has no escaping, so CR and LF in keys and values become spaces and
// headers whose key holds a colon are left out. CONNECT, STOMP and
// CONNECTED frames are never escaped (they follow the 1.0 rules).
// AppendFrame writes the headers it is given: callers add content-length.
func AppendFrame(dst []byte, f *frame.Frame, v Version) []byte {
	if f == nil {
		return append(dst, '\n')
	}
	if f.Command == frame.CONNECT || f.Command == frame.STOMP || f.Command == frame.CONNECTED {
		v = V10
	}
	dst = append(dst, f.Command...)
	dst = append(dst, '\n')
	if f.Header != nil {
		for i := range f.Header.Len() {
			k, val := f.Header.GetAt(i)
			if v == V10 {
				if k == "" || strings.ContainsAny(k, ":\r\n") {
					continue
				}
				dst = appendRaw10(dst, k)
				dst = append(dst, ':')
				dst = appendRaw10(dst, val)
			} else {
				dst = appendEscaped(dst, k, v)
				dst = append(dst, ':')
				dst = appendEscaped(dst, val, v)
			}
			dst = append(dst, '\n')
		}
	}
	dst = append(dst, '\n')
	dst = append(dst, f.Body...)
	return append(dst, 0)
}

func appendRaw10(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		dst = append(dst, c)
	}
	return dst
}

func appendEscaped(dst []byte, s string, v Version) []byte {
	if !strings.ContainsAny(s, "\\\r\n:") {
		return append(dst, s...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case ':':
			dst = append(dst, '\\', 'c')
		case '\r':
			if v >= V12 {
				dst = append(dst, '\\', 'r')
			} else {
				dst = append(dst, c)
			}
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
