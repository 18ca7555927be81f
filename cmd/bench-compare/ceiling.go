package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// ceiling is what the load generator achieves with no edge at all: the
// publishers publish to the upstream broker directly, and a backlog queued
// there for the subscriber's persistent session is delivered to it. The
// harness, the upstream and the edge share the machine's cores, so a figure
// of either system near these is the harness's limit, not the edge's.
type ceiling struct {
	Publishers      int     `json:"publishers"`
	DirectMsgsPerS  float64 `json:"direct_msgs_per_s"`  // 8 publishers → upstream → subscriber, max rate
	BacklogMsgsPerS float64 `json:"backlog_msgs_per_s"` // a queued backlog delivered to the subscriber, first to last arrival
	Backlog         int     `json:"backlog"`
	HarnessCPU      float64 `json:"backlog_harness_cpu_us_per_msg"`
	UpstreamCPU     float64 `json:"backlog_upstream_cpu_us_per_msg"`
	Error           string  `json:"error,omitempty"`
}

func (h *harness) measureCeiling(ctx context.Context) ceiling {
	c := ceiling{Publishers: 8, Backlog: h.s.BacklogCounts[0]}
	if err := h.ceiling(ctx, &c); err != nil {
		c.Error = err.Error()
	}
	fmt.Fprintf(h.progress, "%-12s %-22s        direct=%s msg/s backlog=%s msg/s %s\n", "ceiling", "no edge",
		num(c.DirectMsgsPerS, 0), num(c.BacklogMsgsPerS, 0), c.Error)
	return c
}

func (h *harness) ceiling(ctx context.Context, c *ceiling) error {
	dir, err := os.MkdirTemp(h.tmp, "ceiling-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	startCtx, cancel := context.WithTimeout(ctx, h.s.guard(h.s.StartGuard))
	defer cancel()
	port, err := freePort()
	if err != nil {
		return err
	}
	up, err := startUpstream(startCtx, h.mosquitto, dir, port)
	if err != nil {
		return err
	}
	defer up.kill()
	addr := loopback(port)
	clk := newClock()

	// Direct: the link-up path without an edge.
	h.runSeq++
	tr := newTracker(clk, h.runSeq, c.Publishers, (h.s.LinkUpCount+c.Publishers-1)/c.Publishers)
	sub, err := subscribe(startCtx, addr, fmt.Sprintf("bench-sub-%d", h.runSeq), upstreamFilter, tr)
	if err != nil {
		return err
	}
	start := clk.now()
	if err := h.publishDirect(ctx, addr, clk, tr, h.s.LinkUpCount, h.s.LinkUpFor); err != nil {
		sub.Disconnect(0)
		return err
	}
	waitCtx, cancelWait := context.WithTimeout(ctx, h.s.guard(h.s.LinkUpFor+h.s.AckGuard))
	tr.waitComplete(waitCtx, h.s.guard(h.s.Settle))
	cancelWait()
	sub.Disconnect(0)
	if a := tr.snapshot(); a.ArrivedAcked > 0 && a.Last > start {
		c.DirectMsgsPerS = float64(a.ArrivedAcked) / (a.Last - start).Seconds()
	}

	// Backlog: queue for the subscriber's persistent session while it is
	// away, then let it collect.
	h.runSeq++
	tr = newTracker(clk, h.runSeq, c.Publishers, (c.Backlog+c.Publishers-1)/c.Publishers)
	handler := func(_ paho.Client, m paho.Message) { tr.arrive(m.Topic(), m.Payload(), clk.now()) }
	o := mqttOptions(addr, fmt.Sprintf("bench-sub-%d", h.runSeq)).SetCleanSession(false).
		SetOrderMatters(true).SetDefaultPublishHandler(handler)
	s, err := connect(startCtx, o)
	if err != nil {
		return err
	}
	tok := s.Subscribe(upstreamFilter, 1, nil)
	if !tok.WaitTimeout(h.s.guard(h.s.StartGuard)) {
		s.Disconnect(0)
		return errors.New("ceiling: no SUBACK")
	}
	if err := tok.Error(); err != nil {
		s.Disconnect(0)
		return fmt.Errorf("ceiling: subscribe: %w", err)
	}
	s.Disconnect(100)
	if err := h.publishDirect(ctx, addr, clk, tr, c.Backlog, h.s.BacklogFor); err != nil {
		return err
	}
	cpu0, err := readCPU(up, up) // no edge: the upstream stands in for it
	if err != nil {
		return err
	}
	if s, err = connect(ctx, o); err != nil {
		return err
	}
	defer s.Disconnect(0)
	waitCtx, cancelWait = context.WithTimeout(ctx, h.s.guard(h.s.BacklogFor))
	tr.waitComplete(waitCtx, h.s.guard(h.s.Settle))
	cancelWait()
	cpu1, err := readCPU(up, up)
	if err != nil {
		return err
	}
	a := tr.snapshot()
	if a.ArrivedAcked > 0 && a.Last > a.First {
		c.BacklogMsgsPerS = float64(a.ArrivedAcked) / (a.Last - a.First).Seconds()
		c.HarnessCPU = us(cpu1.harness-cpu0.harness) / float64(a.ArrivedAcked)
		c.UpstreamCPU = us(cpu1.upstream-cpu0.upstream) / float64(a.ArrivedAcked)
	}
	if a.Lost() > 0 {
		return fmt.Errorf("ceiling: %d of %d messages did not arrive", a.Lost(), a.Acked)
	}
	return nil
}

// publishDirect publishes count messages from c.Publishers publishers
// straight to the upstream, on the topics the edges would use there.
func (h *harness) publishDirect(ctx context.Context, addr string, clk clock, tr *tracker, count int, bound time.Duration) error {
	const n = 8
	startCtx, cancel := context.WithTimeout(ctx, h.s.guard(h.s.StartGuard))
	pubs, err := connectPublishers(startCtx, addr, tr.run, clk, n)
	cancel()
	defer func() {
		for _, p := range pubs {
			p.client.Disconnect(0)
		}
	}()
	if err != nil {
		return err
	}
	sendUntil := time.Now().Add(bound)
	ackCtx, cancelAck := context.WithDeadline(ctx, sendUntil.Add(h.s.guard(h.s.AckGuard)))
	defer cancelAck()
	per := (count + n - 1) / n
	start := clk.now()
	var wg sync.WaitGroup
	for i, p := range pubs {
		p.topic = "sites/" + gatewayID + "/" + publisherTopic(i)
		l := load{count: max(0, min(per, count-i*per)), window: h.s.Window, start: start, sendUntil: sendUntil}
		wg.Go(func() { p.run(ackCtx, l) })
	}
	wg.Wait()
	acked := make([][]bool, n)
	for i, p := range pubs {
		acked[i] = p.acked
	}
	tr.setAcked(acked)
	return nil
}
