package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/internal/natsserver"
)

// farEnd is the upstream side of a run: the broker the edge bridges to
// (a fresh mosquitto, or a fresh nats-server with JetStream) and the
// subscriber that records in the run's tracker what arrives there.
type farEnd struct {
	broker *process
	addr   string // host:port the edge (or the uplink switch) connects to
	close  func() // the subscriber, then the broker
	// stored, for JetStream, is how many messages the stream holds; nil
	// for mosquitto, which keeps nothing.
	stored func(ctx context.Context) (uint64, error)
}

// startFarEnd starts the upstream of the given kind in dir and subscribes
// to everything the edge forwards there.
func (h *harness) startFarEnd(ctx context.Context, dir, kind string, run uint32, tr *tracker) (*farEnd, error) {
	if kind == upstreamJetStream {
		return h.startJetStream(ctx, dir, tr)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	up, err := startUpstream(ctx, h.mosquitto, dir, port)
	if err != nil {
		return nil, err
	}
	sub, err := subscribe(ctx, loopback(port), fmt.Sprintf("bench-sub-%d", run), upstreamFilter, tr)
	if err != nil {
		up.kill()
		return nil, fmt.Errorf("subscriber: %w", err)
	}
	return &farEnd{broker: up, addr: loopback(port), close: func() { sub.Disconnect(0); up.kill() }}, nil
}

// startJetStream runs nats-server with JetStream (file storage in dir,
// the configuration of internal/natsserver), creates the stream
// jetStreamName on jetStreamSubject and reads it with an ordered consumer
// from the first message: the consumer delivers in stream order and
// starts over where it left off after a gap, so the tracker sees what the
// stream holds, in the stream's order, each message once.
func (h *harness) startJetStream(ctx context.Context, dir string, tr *tracker) (*farEnd, error) {
	if h.natsServer == "" {
		return nil, errNoNATS
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nats.conf")
	c := natsserver.Config{Name: "bench-upstream", Port: port, StoreDir: filepath.Join(dir, "js")}
	if err := os.WriteFile(conf, []byte(c.File()), 0o600); err != nil {
		return nil, err
	}
	up, err := startProcess("upstream nats-server", filepath.Join(dir, "nats.log"), h.natsServer, natsserver.Args(conf, "")...)
	if err != nil {
		return nil, err
	}
	if err := up.waitListening(ctx, loopback(port)); err != nil {
		up.kill()
		return nil, err
	}
	fail := func(nc *nats.Conn, err error) (*farEnd, error) {
		if nc != nil {
			nc.Close()
		}
		up.kill()
		return nil, fmt.Errorf("jetstream: %w; log: %s", err, up.tail())
	}
	nc, err := nats.Connect("nats://"+loopback(port), nats.Name("bench-sub"), nats.NoReconnect())
	if err != nil {
		return fail(nil, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(nc, err)
	}
	// The duplicate window (2 min by default) drops the copies an
	// at-least-once resend makes: Ferry sends each message's id as
	// Nats-Msg-Id.
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: jetStreamName, Subjects: []string{jetStreamSubject}, Storage: jetstream.FileStorage})
	if err != nil {
		return fail(nc, fmt.Errorf("create stream: %w", err))
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return fail(nc, fmt.Errorf("consumer: %w", err))
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		topic, err := bridge.TopicOf(m.Subject())
		if err != nil {
			topic = m.Subject() // counted as foreign by the tracker
		}
		tr.arrive(topic, m.Data(), tr.clock.now())
	})
	if err != nil {
		return fail(nc, fmt.Errorf("consume: %w", err))
	}
	return &farEnd{
		broker: up, addr: loopback(port),
		close: func() { cc.Stop(); nc.Close(); up.kill() },
		stored: func(ctx context.Context) (uint64, error) {
			info, err := stream.Info(ctx)
			if err != nil {
				return 0, err
			}
			return info.State.Msgs, nil
		},
	}, nil
}

var errNoNATS = errors.New("nats-server not found (the JetStream upstream of the drain per upstream kind): " +
	"apt-get install nats-server, set NATS_SERVER=/path/to/nats-server, or leave the scenario out with -only")

// needsNATS reports whether any of the scenarios runs a JetStream upstream.
func needsNATS(scs []scenario) bool {
	for _, sc := range scs {
		for _, sys := range sc.Systems {
			if sys.Upstream == upstreamJetStream {
				return true
			}
		}
	}
	return false
}

// checkDrain is the delivery check of the drain per upstream kind: the
// whole backlog was acknowledged by the edge (every system drains the same
// backlog), every acknowledged message arrived upstream, none behind a
// later one of its topic, and nothing arrived that no publisher of the
// run sent. Duplicates are allowed (at-least-once) and counted. For
// JetStream the stream must hold exactly what the consumer read.
func checkDrain(ctx context.Context, sc scenario, f map[string]float64, a arrivals, far *farEnd) error {
	var problems []string
	if int(f["acked"]) != sc.Count {
		problems = append(problems, fmt.Sprintf("backlog incomplete: %d of %d acknowledged", int(f["acked"]), sc.Count))
	}
	if a.Lost() > 0 {
		problems = append(problems, fmt.Sprintf("%d acknowledged messages never arrived", a.Lost()))
	}
	if a.OrderViolations > 0 {
		problems = append(problems, fmt.Sprintf("%d order violations within a topic", a.OrderViolations))
	}
	if a.Foreign > 0 {
		problems = append(problems, fmt.Sprintf("%d messages of no publisher of this run", a.Foreign))
	}
	if far.stored != nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := far.stored(sctx)
		cancel()
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("stream info: %v", err))
		default:
			f["upstream_stored"] = float64(n)
			if read := uint64(a.Unique + a.Duplicates + a.Foreign); n != read {
				problems = append(problems, fmt.Sprintf("the stream holds %d messages, the consumer read %d", n, read))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("delivery check: %s", strings.Join(problems, "; "))
	}
	return nil
}
