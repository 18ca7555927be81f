// Command ferry is the Ferry edge message gateway.
//
//	ferry run -c FILE              run the gateway
//	ferry check -c FILE            validate a configuration, print every problem
//	ferry version                  print the version
//	ferry passwd                   read a password on stdin, print its bcrypt hash for users:
//	ferry spool stats -c FILE      backlog, DLQ and counters of the spool
//	ferry spool dlq ls|requeue|purge [-all] [ID…] -c FILE
//	ferry spool replay -since DURATION -c FILE
//	ferry spool compact -c FILE
//
// The spool commands work on the spool file when the gateway is stopped and
// through the running gateway's HTTP API when it holds the file.
//
// Exit codes: 0 success; 1 a runtime failure; 2 bad usage or an invalid
// configuration; 3 the spool is held by a gateway that cannot be reached.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/spool"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitLocked  = 3
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

const usage = `usage: ferry <command> [flags]

commands:
  run -c FILE                 run the gateway
  check -c FILE               validate a configuration and print every problem
  version                     print the version
  passwd [-cost N]            read a password from stdin, print its bcrypt hash
  spool stats -c FILE         backlog per lane, DLQ, counters
  spool dlq ls -c FILE        list dead letters
  spool dlq requeue -c FILE (-all | ID…)
  spool dlq purge -c FILE (-all | ID…)
  spool replay -c FILE -since DURATION
  spool compact -c FILE

Run 'ferry <command> -h' for a command's flags.
`

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "ferry", gateway.Version)
		return exitOK
	case "passwd":
		return cmdPasswd(args[1:], stdin, stdout, stderr)
	case "spool":
		return cmdSpool(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "ferry: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

func flags(name string, stderr io.Writer, help string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("c", "/etc/ferry/ferry.yaml", "configuration `file`")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s\n\nflags:\n", help)
		fs.PrintDefaults()
	}
	return fs, cfg
}

func parse(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}

func load(path string, stderr io.Writer) (*gateway.Config, int) {
	cfg, err := gateway.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		return nil, exitUsage
	}
	return cfg, exitOK
}

func cmdRun(args []string, stderr io.Writer) int {
	fs, path := flags("run", stderr, "ferry run -c FILE")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	cfg, code := load(*path, stderr)
	if cfg == nil {
		return code
	}
	logger := cfg.Log.NewLogger(stderr)
	// First SIGINT/SIGTERM: graceful shutdown. A second one: exit at once.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logger.Info("shutting down", "signal", s.String())
		stop()
		s = <-sigs
		logger.Error("second signal, exiting without a clean shutdown", "signal", s.String())
		os.Exit(exitFailure)
	}()
	g, err := gateway.New(cfg, gateway.Options{Logger: logger, Banner: stderr})
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		if errors.Is(err, spool.ErrLocked) {
			return exitLocked
		}
		return exitFailure
	}
	go func() {
		for range reload {
			if err := g.Reload(*path); err != nil {
				logger.Error("reload failed, keeping the running configuration", "err", err)
			}
		}
	}()
	if err := g.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs, path := flags("check", stderr, "ferry check -c FILE")
	print := fs.Bool("print", false, "print the effective configuration (defaults filled in)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	cfg, code := load(*path, stderr)
	if cfg == nil {
		return code
	}
	if *print {
		b, err := cfg.EffectiveYAML()
		if err != nil {
			fmt.Fprintf(stderr, "ferry: %v\n", err)
			return exitFailure
		}
		_, _ = stdout.Write(b)
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return exitOK
}

func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", 10, "bcrypt cost (each step doubles the work; a Pi Zero takes ~0.1 s at 10)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
		return exitFailure
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(stderr, "ferry passwd: empty password on stdin")
		return exitUsage
	}
	h, err := gateway.HashPassword(pw, *cost)
	if err != nil {
		fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
		return exitUsage
	}
	fmt.Fprintln(stdout, h)
	return exitOK
}

func cmdSpool(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	if h := args[0]; h == "-h" || h == "-help" || h == "--help" || (h == "dlq" && len(args) > 1 && strings.HasPrefix(args[1], "-h")) {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	sub := args[0]
	if sub == "dlq" {
		if len(args) < 2 {
			fmt.Fprintln(stderr, "usage: ferry spool dlq ls|requeue|purge -c FILE")
			return exitUsage
		}
		sub, args = "dlq "+args[1], args[1:]
	}
	fs, path := flags("spool "+sub, stderr, "ferry spool "+sub+" -c FILE")
	all := fs.Bool("all", false, "dlq requeue/purge: every dead letter")
	since := fs.Duration("since", 0, "replay: re-enqueue delivered messages accepted within this `duration` (e.g. 2h)")
	max := fs.Int("max", 100, "dlq ls: list at most this many")
	if code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	switch sub {
	case "stats", "dlq ls", "dlq requeue", "dlq purge", "replay", "compact":
	default:
		fmt.Fprintf(stderr, "ferry spool: unknown command %q\n\n%s", sub, usage)
		return exitUsage
	}
	cfg, code := load(*path, stderr)
	if cfg == nil {
		return code
	}
	adm, err := gateway.OpenSpoolAdmin(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		if errors.Is(err, spool.ErrLocked) {
			return exitLocked
		}
		return exitFailure
	}
	defer func() { _ = adm.Close() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p := newProgress(stdout)

	switch sub {
	case "stats":
		st, err := adm.Stats(ctx)
		if err != nil {
			return fail(stderr, err)
		}
		printStats(stdout, adm.Where(), st)
	case "dlq ls":
		dl, err := adm.DLQ(ctx, 0, *max)
		if err != nil {
			return fail(stderr, err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tLANE\tATTEMPTS\tDEAD AT\tBYTES\tREASON")
		for _, d := range dl {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%s\n", d.ID, d.Priority, d.Attempts, d.DeadAt.Format(time.RFC3339), len(d.Data), d.Reason)
		}
		_ = tw.Flush()
	case "dlq requeue", "dlq purge":
		ids, err := parseIDs(fs.Args(), *all)
		if err != nil {
			fmt.Fprintf(stderr, "ferry spool %s: %v\n", sub, err)
			return exitUsage
		}
		op := adm.Requeue
		if sub == "dlq purge" {
			op = adm.PurgeDLQ
		}
		n, err := batched(ctx, adm, ids, *all, op, p)
		if err != nil {
			return fail(stderr, err)
		}
		p.done(fmt.Sprintf("%s: %d dead letters %s", adm.Where(), n, map[bool]string{true: "requeued", false: "purged"}[sub == "dlq requeue"]))
	case "replay":
		if *since <= 0 {
			fmt.Fprintln(stderr, "ferry spool replay: -since DURATION is required (e.g. -since 2h)")
			return exitUsage
		}
		p.step("replaying", 0, 0)
		n, err := adm.Replay(ctx, time.Now().Add(-*since))
		if err != nil {
			return fail(stderr, err)
		}
		p.done(fmt.Sprintf("%s: %d delivered messages re-enqueued", adm.Where(), n))
	case "compact":
		p.step("compacting", 0, 0)
		before, after, err := adm.Compact(ctx)
		if err != nil {
			return fail(stderr, err)
		}
		p.done(fmt.Sprintf("%s: %s -> %s", adm.Where(), human(before), human(after)))
	}
	return exitOK
}

func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "ferry: %v\n", err)
	return exitFailure
}

func parseIDs(args []string, all bool) ([]uint64, error) {
	if all == (len(args) > 0) {
		return nil, errors.New("give message ids or -all (not both)")
	}
	ids := make([]uint64, 0, len(args))
	for _, a := range args {
		id, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("message id %q: not a number", a)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// batched runs a DLQ operation page by page so that progress can be shown.
func batched(ctx context.Context, adm gateway.SpoolAdmin, ids []uint64, all bool, op func(context.Context, ...uint64) (int, error), p *progress) (int, error) {
	total := 0
	if all {
		st, err := adm.Stats(ctx)
		if err != nil {
			return 0, err
		}
		want := int(st.DLQMessages)
		var after uint64
		for {
			page, err := adm.DLQ(ctx, after, 1000)
			if err != nil || len(page) == 0 {
				return total, err
			}
			ids = ids[:0]
			for _, d := range page {
				ids = append(ids, d.ID)
				after = d.ID
			}
			n, err := op(ctx, ids...)
			total += n
			p.step("dead letters", total, want)
			if err != nil {
				return total, err
			}
		}
	}
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 1000)]
		ids = ids[len(chunk):]
		n, err := op(ctx, chunk...)
		total += n
		p.step("dead letters", total, total+len(ids))
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func printStats(w io.Writer, where string, st spool.Stats) {
	fmt.Fprintf(w, "spool %s\n", where)
	fmt.Fprintf(w, "  queued     %d messages, %s (%d leased)\n", st.Messages, human(st.Bytes), st.Leased)
	if o := st.Oldest(); !o.IsZero() {
		fmt.Fprintf(w, "  oldest     %s ago\n", time.Since(o).Round(time.Second))
	}
	fmt.Fprintf(w, "  dlq        %d messages, %s\n", st.DLQMessages, human(st.DLQBytes))
	if st.Retained > 0 {
		fmt.Fprintf(w, "  retained   %d delivered messages, %s\n", st.Retained, human(st.RetainedBytes))
	}
	fmt.Fprintf(w, "  file       %s, full=%v, dedupe keys %d\n", human(st.FileSize), st.Full, st.DedupeEntries)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  lane\tmessages\tbytes\toldest\t")
	for i, l := range st.Lanes {
		if l.Messages == 0 {
			continue
		}
		fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t\n", i, l.Messages, human(l.Bytes), time.Since(l.Oldest).Round(time.Second))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "  since open: accepted %d, duplicates %d, acked %d, nacked %d, dead-lettered %d, rejected %d\n",
		st.Accepted, st.Duplicates, st.Acked, st.Nacked, st.DeadLettered, st.Rejected)
	for i, n := range st.Dropped {
		if n > 0 {
			fmt.Fprintf(w, "  dropped (%s) %d\n", spool.DropReasonNames[i], n)
		}
	}
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
