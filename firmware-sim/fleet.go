package firmwaresim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// FleetOptions describe a fleet of devices built from one template.
type FleetOptions struct {
	Devices int // number of devices (required, ≥ 1)
	// Mix assigns protocols round-robin: device i speaks
	// Mix[i%len(Mix)]. Default: all MQTT311. See ParseMix.
	Mix       []Protocol
	MQTTAddr  string // gateway MQTT listener, for MQTT 3.1.1 and 5 devices
	STOMPAddr string // gateway STOMP listener, for STOMP devices
	Prefix    string // device names are Prefix + index; default "dev"
	// RunID prefixes every reading id; default: 6 random hex digits.
	RunID string
	// Template supplies every other DeviceConfig field (Topic, Rate,
	// Burst, QoS, PayloadSize, Count, Window, timeouts, offline spells,
	// credentials, Logger). Its Name, Index, Protocol, Addr, ClientID and
	// RunID are set per device.
	Template DeviceConfig
	// Duration bounds production; default 10 minutes, so that a fleet
	// bounded only by Template.Count still ends.
	Duration time.Duration
	// Drain is how long devices keep re-sending unacknowledged readings
	// after production ends; default 10s.
	Drain  time.Duration
	Logger *slog.Logger // nil: discard; devices inherit it unless Template.Logger is set
}

// Fleet runs many devices.
type Fleet struct {
	opts    FleetOptions
	devices []*Device
}

// NewFleet validates o and builds the devices.
func NewFleet(o FleetOptions) (*Fleet, error) {
	if o.Devices < 1 {
		return nil, fmt.Errorf("firmwaresim: fleet: devices must be ≥ 1 (got %d)", o.Devices)
	}
	if len(o.Mix) == 0 {
		o.Mix = []Protocol{MQTT311}
	}
	if o.Prefix == "" {
		o.Prefix = "dev"
	}
	if o.RunID == "" {
		var b [3]byte
		_, _ = rand.Read(b[:])
		o.RunID = hex.EncodeToString(b[:])
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Minute
	}
	if o.Drain <= 0 {
		o.Drain = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{opts: o}
	var errs []error
	for i := range o.Devices {
		c := o.Template
		c.Index = i
		c.Name = o.Prefix + strconv.Itoa(i)
		c.Protocol = o.Mix[i%len(o.Mix)]
		c.ClientID = "fsim-" + o.RunID + "-" + c.Name
		c.RunID = o.RunID
		switch c.Protocol {
		case MQTT311, MQTT5:
			c.Addr = o.MQTTAddr
		case STOMP:
			c.Addr = o.STOMPAddr
		}
		if c.Logger == nil {
			c.Logger = o.Logger
		}
		d, err := NewDevice(c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.devices = append(f.devices, d)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return f, nil
}

// RunID is the run id in every reading id of this fleet.
func (f *Fleet) RunID() string { return f.opts.RunID }

// Devices returns the fleet's devices.
func (f *Fleet) Devices() []*Device { return append([]*Device(nil), f.devices...) }

// Run runs every device until each has produced its Count (or Duration
// passed) and drained, or ctx ends. It returns ctx.Err() when cancelled.
func (f *Fleet) Run(ctx context.Context) error {
	start := time.Now()
	produceUntil := start.Add(f.opts.Duration)
	drainUntil := produceUntil.Add(f.opts.Drain)
	var wg sync.WaitGroup
	errs := make([]error, len(f.devices))
	for i, d := range f.devices {
		wg.Go(func() {
			errs[i] = d.Run(ctx, produceUntil, drainUntil)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// Acked returns every device's acknowledged reading ids with their ack
// times.
func (f *Fleet) Acked() map[string]time.Time {
	out := map[string]time.Time{}
	for _, d := range f.devices {
		d.copyAcked(out)
	}
	return out
}

// Stats sums the devices' counters.
func (f *Fleet) Stats() DeviceStats {
	var s DeviceStats
	for _, d := range f.devices {
		s.add(d.Stats())
	}
	return s
}

func (s DeviceStats) String() string {
	return fmt.Sprintf("sent=%d acked=%d unacked=%d retransmits=%d connects=%d connect_errors=%d cuts=%d offline=%d",
		s.Sent, s.Acked, s.Unacked, s.Retransmits, s.Connects, s.ConnectErrors, s.Cuts, s.OfflineSpells)
}

// ParseMix parses a protocol mix such as "mqtt311:3,stomp:1" (three MQTT
// devices for each STOMP one) or "mqtt311,stomp" (weights default to 1)
// into the round-robin list FleetOptions.Mix expects.
func ParseMix(s string) ([]Protocol, error) {
	var mix []Protocol
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, weight, hasWeight := strings.Cut(part, ":")
		p, err := ParseProtocol(name)
		if err != nil {
			return nil, err
		}
		n := 1
		if hasWeight {
			if n, err = strconv.Atoi(weight); err != nil || n < 0 || n > 1000 {
				return nil, fmt.Errorf("firmwaresim: mix %q: weight of %s must be 0..1000", s, name)
			}
		}
		for range n {
			mix = append(mix, p)
		}
	}
	if len(mix) == 0 {
		return nil, fmt.Errorf("firmwaresim: mix %q: no protocol with a weight > 0", s)
	}
	return interleave(mix), nil
}

// interleave spreads each protocol evenly over the list, so that a fleet
// smaller than the list still gets the mix (mqtt,mqtt,mqtt,stomp becomes
// mqtt,stomp,mqtt,mqtt).
func interleave(mix []Protocol) []Protocol {
	count := map[Protocol]int{}
	var order []Protocol
	for _, p := range mix {
		if count[p] == 0 {
			order = append(order, p)
		}
		count[p]++
	}
	out := make([]Protocol, 0, len(mix))
	for len(out) < len(mix) {
		for _, p := range order {
			if count[p] > 0 {
				out = append(out, p)
				count[p]--
			}
		}
	}
	return out
}
