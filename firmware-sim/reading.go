package firmwaresim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Reading is the JSON document a simulated device publishes.
type Reading struct {
	ID  string `json:"id"`            // "<run>-<device>-<seq>", unique across runs
	Run string `json:"run,omitempty"` // the fleet's run id
	Dev string `json:"dev"`           // device name
	Seq int64  `json:"seq"`           // per device, from 1
	TS  int64  `json:"ts"`            // first send time, Unix nanoseconds
	Pad string `json:"pad,omitempty"` // filler up to the configured payload size
}

// ReadingID is the id of a device's seq-th reading in run.
func ReadingID(run, dev string, seq int64) string {
	if run == "" {
		return fmt.Sprintf("%s-%06d", dev, seq)
	}
	return fmt.Sprintf("%s-%s-%06d", run, dev, seq)
}

// Encode returns the JSON of r padded with Pad so that it is at least size
// bytes long (exactly size when size exceeds the unpadded length by enough
// for the pad field).
func (r Reading) Encode(size int) []byte {
	r.Pad = ""
	b, _ := json.Marshal(r) // plain strings and ints: cannot fail
	const padField = len(`,"pad":""`)
	if n := size - len(b) - padField; n > 0 {
		r.Pad = strings.Repeat("x", n)
		b, _ = json.Marshal(r)
	}
	return b
}

// ErrNotReading is returned (wrapped) by DecodeArrival for a payload that
// is neither a device reading nor an envelope around one.
var ErrNotReading = errors.New("not a device reading")

// DecodeArrival parses what arrived upstream: a Reading as the device sent
// it, or Ferry's envelope around one. envelopeID is the envelope's id ("" for
// a raw reading).
func DecodeArrival(payload []byte) (r Reading, envelopeID string, err error) {
	var doc struct {
		ID       string          `json:"id"`
		Dev      *string         `json:"dev"`
		Seq      *int64          `json:"seq"`
		Payload  json.RawMessage `json:"payload"`
		Encoding string          `json:"encoding"`
	}
	if err := json.Unmarshal(payload, &doc); err != nil {
		return Reading{}, "", fmt.Errorf("%w: %w", ErrNotReading, err)
	}
	inner := payload
	if doc.Dev == nil && len(doc.Payload) > 0 {
		// Envelope.
		envelopeID = doc.ID
		inner = doc.Payload
		if doc.Encoding == "base64" {
			var s string
			if err := json.Unmarshal(doc.Payload, &s); err != nil {
				return Reading{}, envelopeID, fmt.Errorf("%w: envelope payload: %w", ErrNotReading, err)
			}
			if inner, err = base64.StdEncoding.DecodeString(s); err != nil {
				return Reading{}, envelopeID, fmt.Errorf("%w: envelope payload: %w", ErrNotReading, err)
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(inner))
	if err := dec.Decode(&r); err != nil {
		return Reading{}, envelopeID, fmt.Errorf("%w: %w", ErrNotReading, err)
	}
	if r.ID == "" || r.Dev == "" || r.Seq <= 0 {
		return Reading{}, envelopeID, fmt.Errorf("%w: missing id, dev or seq", ErrNotReading)
	}
	return r, envelopeID, nil
}

// ExpandTopic fills a topic template: {device} is the device name, {n} its
// index in the fleet, {proto} its protocol.
func ExpandTopic(tmpl, device string, n int, proto Protocol) string {
	return strings.NewReplacer("{device}", device, "{n}", strconv.Itoa(n), "{proto}", proto.String()).Replace(tmpl)
}
