// Command firmware-sim runs a fleet of simulated devices against a Ferry
// gateway (MQTT and STOMP listeners) and verifies upstream that every
// reading the gateway acknowledged arrived, in order. It prints progress
// lines and a final report, and exits 1 when the report is not OK (or
// nothing was acknowledged), 2 on bad flags or setup errors.
//
//	firmware-sim --devices 8 --mix mqtt311:2,mqtt5:1,stomp:1 --rate 20 --count 500 \
//	    --mqtt 127.0.0.1:1883 --stomp 127.0.0.1:61613 --upstream 127.0.0.1:1884
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	firmwaresim "github.com/ferrymq/ferry/firmware-sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type config struct {
	fleet    firmwaresim.FleetOptions
	verifier firmwaresim.VerifierOptions
	upstream string
	settle   time.Duration
	progress time.Duration
	mix      string
	qos      uint
	logLevel string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("firmware-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	t := &c.fleet.Template
	fs.StringVar(&c.fleet.MQTTAddr, "mqtt", "127.0.0.1:1883", "gateway MQTT listener (host:port)")
	fs.StringVar(&c.fleet.STOMPAddr, "stomp", "127.0.0.1:61613", "gateway STOMP listener (host:port)")
	fs.StringVar(&c.upstream, "upstream", "127.0.0.1:1884", "upstream broker the verifier subscribes to; empty: no verification")
	fs.StringVar(&c.verifier.Filter, "filter", "sites/#", "upstream topic filter of the verifier")
	fs.StringVar(&c.verifier.Username, "upstream-username", "", "verifier username")
	fs.StringVar(&c.verifier.Password, "upstream-password", "", "verifier password")
	fs.BoolVar(&c.verifier.Persistent, "persistent", false, "verifier uses a persistent session (CleanSession=false)")
	fs.IntVar(&c.fleet.Devices, "devices", 4, "number of devices")
	fs.StringVar(&c.mix, "mix", "mqtt311", "protocol mix: mqtt311, mqtt5, stomp with weights, e.g. mqtt311:2,mqtt5:1,stomp:1")
	fs.StringVar(&c.fleet.Prefix, "prefix", "dev", "device name prefix")
	fs.StringVar(&c.fleet.RunID, "run-id", "", "run id prefixed to every reading id (default: random)")
	fs.StringVar(&t.Topic, "topic", "sensors/{device}/temp", "topic template: {device}, {n}, {proto}")
	fs.StringVar(&t.Username, "username", "", "gateway username (MQTT and STOMP)")
	fs.StringVar(&t.Password, "password", "", "gateway password")
	fs.Float64Var(&t.Rate, "rate", 10, "readings per second per device (0: as fast as acks allow)")
	fs.IntVar(&t.Burst, "burst", 1, "rate burst per device")
	fs.UintVar(&c.qos, "qos", 1, "MQTT QoS 0..2; STOMP: 0 sends without receipt, else with one")
	fs.IntVar(&t.Window, "window", 1, "unacknowledged messages in flight per device")
	fs.IntVar(&t.PayloadSize, "size", 128, "payload bytes per reading (JSON, padded)")
	fs.IntVar(&t.Count, "count", 100, "readings per device (0: until --duration)")
	fs.DurationVar(&c.fleet.Duration, "duration", time.Minute, "maximum production time")
	fs.DurationVar(&c.fleet.Drain, "drain", 10*time.Second, "time to re-send unacknowledged readings after production")
	fs.DurationVar(&c.settle, "settle", 30*time.Second, "time to wait upstream for acknowledged readings")
	fs.DurationVar(&t.AckTimeout, "ack-timeout", 10*time.Second, "no ack within this: reconnect and re-send")
	fs.DurationVar(&t.OfflineEvery, "offline-every", 0, "go offline every this much connected time (0: never)")
	fs.DurationVar(&t.OfflineFor, "offline-for", 0, "length of an offline spell")
	fs.DurationVar(&c.progress, "progress", time.Second, "progress line interval (0: none)")
	fs.StringVar(&c.logLevel, "log-level", "warn", "debug, info, warn or error (logs go to stderr)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.qos > 2 {
		return nil, fmt.Errorf("--qos must be 0..2 (got %d)", c.qos)
	}
	t.QoS = byte(c.qos)
	mix, err := firmwaresim.ParseMix(c.mix)
	if err != nil {
		return nil, err
	}
	c.fleet.Mix = mix
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	c.fleet.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	c.verifier.Logger = c.fleet.Logger
	c.verifier.Broker = c.upstream
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "firmware-sim:", err)
		return 2
	}
	fleet, err := firmwaresim.NewFleet(c.fleet)
	if err != nil {
		fmt.Fprintln(stderr, "firmware-sim:", err)
		return 2
	}
	var v *firmwaresim.Verifier
	if c.upstream != "" {
		c.verifier.RunID = fleet.RunID()
		v = firmwaresim.NewVerifier(c.verifier)
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := v.Start(sctx)
		cancel()
		if err != nil {
			fmt.Fprintln(stderr, "firmware-sim:", err)
			return 2
		}
		defer v.Close()
	}
	fmt.Fprintf(stdout, "run %s: %d devices (%s), %g msgs/s each, qos %d, %d bytes, count %d, duration %v\n",
		fleet.RunID(), c.fleet.Devices, c.mix, c.fleet.Template.Rate, c.qos, c.fleet.Template.PayloadSize,
		c.fleet.Template.Count, c.fleet.Duration)

	start := time.Now()
	progress := func() {
		line := fmt.Sprintf("%6.1fs %v", time.Since(start).Seconds(), fleet.Stats())
		if v != nil {
			line += fmt.Sprintf(" arrived=%d", v.Arrived())
		}
		fmt.Fprintln(stdout, line)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if c.progress <= 0 {
			<-done
			return
		}
		tick := time.NewTicker(c.progress)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				progress()
			}
		}
	}()
	runErr := fleet.Run(ctx)
	acked := fleet.Acked()
	if v != nil && ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, c.settle)
		v.WaitFor(wctx, acked)
		cancel()
	}
	close(done)
	<-stopped
	progress()
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		fmt.Fprintln(stderr, "firmware-sim:", runErr)
	}
	if v == nil {
		fmt.Fprintf(stdout, "no upstream to verify against: %d readings acknowledged\n", len(acked))
		if len(acked) == 0 && c.fleet.Template.QoS > 0 {
			return 1
		}
		return 0
	}
	r := v.Report(acked)
	fmt.Fprint(stdout, r)
	if !r.OK() {
		return 1
	}
	if r.Acked == 0 && c.fleet.Template.QoS > 0 {
		fmt.Fprintln(stdout, "FAILED: nothing was acknowledged (is the gateway running?)")
		return 1
	}
	return 0
}
