// Command ferry is the Ferry edge message gateway.
//
//	ferry run [-v] [-c] FILE       run the gateway; -v, --log-level LEVEL override log.level
//	ferry check [-c] FILE          validate a configuration, print every problem
//	ferry demo                     store-and-forward demonstrated: link cuts, a SIGKILL, a verified summary
//	ferry version                  version, commit, build date, Go version, spool format
//	ferry passwd                   ask for a password (or read a line from stdin), print its bcrypt hash for users:
//	ferry spool stats -c FILE      backlog, DLQ, file size on disk and counters of the spool
//	ferry spool dlq ls -c FILE     dead letters: id, lane, topic, size, age, reason
//	ferry spool dlq requeue|purge -c FILE (-all | ID…)
//	ferry spool replay -since DURATION -c FILE
//	ferry spool compact -c FILE
//	(every spool command: -upstream NAME for the spool of an upstreams entry)
//
// The spool commands work on the spool file when the gateway is stopped and
// through the running gateway's HTTP API when it holds the file; with
// listeners.http.auth they log in with FERRY_HTTP_PASSWORD (basic, user
// FERRY_HTTP_USER or listeners.http.auth.username) or FERRY_HTTP_TOKEN.
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
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/gcfloor"
	"github.com/ferrymq/ferry/spool"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitLocked  = 3
)

func main() {
	// `go install …@v1.2.3` stamps the module version, not the -X one:
	// the status page, metrics and log then name it too.
	gateway.Version = currentBuild().Version
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `usage: ferry <command> [flags]

commands:
  run [-v] [-c] FILE          run the gateway (-v or --log-level LEVEL: instead of log.level)
  check [-c] FILE [-print]    validate a configuration and print every problem
  demo [--duration 60s]       link cuts and a gateway SIGKILL with simulated devices; a verified summary
  version                     version, commit, build date, Go version, spool format
  passwd [-cost N]            ask for a password (or read one line from a pipe), print its bcrypt hash
  spool stats -c FILE         backlog per lane, DLQ, file size on disk, counters
  spool dlq ls -c FILE        dead letters: id, lane, topic, size, age, reason
  spool dlq requeue -c FILE (-all | ID…)
  spool dlq purge -c FILE (-all | ID…)
  spool replay -c FILE -since DURATION
  spool compact -c FILE
  (spool commands: -upstream NAME works on that upstreams entry's spool)

The spool commands reach a running gateway through its HTTP API; with
listeners.http.auth they log in with FERRY_HTTP_PASSWORD (user:
FERRY_HTTP_USER or listeners.http.auth.username) or FERRY_HTTP_TOKEN.

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
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		printVersion(stdout)
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

// parseArgs parses flags and positional arguments in any order
// (`ferry spool dlq requeue 12 -c ferry.yaml` as well as the flags first);
// after "--" everything is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, int, bool) {
	var pos []string
	for {
		if code, ok := parse(fs, args); !ok {
			return nil, code, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, 0, true
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), 0, true
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// configPath returns the configuration file of `ferry run` and `ferry
// check`: -c FILE or one positional FILE, not two different ones.
func configPath(fs *flag.FlagSet, flagPath string, pos []string, stderr io.Writer) (string, bool) {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "c" })
	switch {
	case len(pos) > 1:
		fmt.Fprintf(stderr, "ferry %s: one configuration file, got %d: %q\n", fs.Name(), len(pos), pos)
	case len(pos) == 1 && set && pos[0] != flagPath:
		fmt.Fprintf(stderr, "ferry %s: two configuration files: -c %s and %s; give one\n", fs.Name(), flagPath, pos[0])
	case len(pos) == 1:
		return pos[0], true
	default:
		return flagPath, true
	}
	fs.Usage()
	return "", false
}

func load(path string, stderr io.Writer) (*config.Config, int) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		return nil, exitUsage
	}
	return cfg, exitOK
}

// defaultGCFloorMiB is the heap the garbage collector may grow to before it
// runs (internal/gcfloor): with GOGC's default rule the few MiB of live heap
// were collected every few milliseconds under load, a fifth of the CPU per
// message; 16 MiB took that back for about 8 MiB more anonymous memory
// (docs/operations.md).
const defaultGCFloorMiB = 16

// gcFloor is the heap floor to keep: FERRY_GC_FLOOR_MIB (0: none), else the
// default; none when the environment tunes the collector itself (GOGC or
// GOMEMLIMIT set: Go's own rules apply).
func gcFloor(getenv func(string) string) (uint64, error) {
	v := getenv("FERRY_GC_FLOOR_MIB")
	if getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "" {
		if v != "" {
			return 0, errors.New("FERRY_GC_FLOOR_MIB: set together with GOGC or GOMEMLIMIT; choose one way to tune the garbage collector")
		}
		return 0, nil
	}
	if v == "" {
		return defaultGCFloorMiB << 20, nil
	}
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("FERRY_GC_FLOOR_MIB: %q is not a whole number of MiB (0 to 65535; 0: no floor)", v)
	}
	return n << 20, nil
}

func cmdRun(args []string, stderr io.Writer) int {
	fs, flagPath := flags("run", stderr, "ferry run [-v | --log-level LEVEL] [-c] FILE")
	verbose := fs.Bool("v", false, "log at debug level (as --log-level debug)")
	levelFlag := fs.String("log-level", "", "log from this `level` (debug, info, warn, error) instead of log.level, also after a reload")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	path, ok := configPath(fs, *flagPath, pos, stderr)
	if !ok {
		return exitUsage
	}
	pinned, lvl, ok := levelOverride(*verbose, *levelFlag, stderr)
	if !ok {
		fs.Usage()
		return exitUsage
	}
	cfg, code := load(path, stderr)
	if cfg == nil {
		return code
	}
	// One LevelVar: a reload (SIGHUP) sets it from log.level unless the
	// command line chose the level.
	level := new(slog.LevelVar)
	level.Set(cfg.Log.SlogLevel())
	if pinned {
		level.Set(lvl)
	}
	logger := cfg.Log.NewLogger(stderr, level)
	floor, err := gcFloor(os.Getenv)
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		return exitUsage
	}
	gcfloor.Start(floor)
	if path := os.Getenv("FERRY_CPUPROFILE"); path != "" {
		// Diagnostics: a CPU profile of the whole run, written at a
		// graceful stop (go tool pprof bin/ferry PATH); {pid} in PATH is
		// replaced by the process id.
		stopProfile, err := startCPUProfile(strings.ReplaceAll(path, "{pid}", strconv.Itoa(os.Getpid())))
		if err != nil {
			fmt.Fprintf(stderr, "ferry: FERRY_CPUPROFILE: %v\n", err)
			return exitFailure
		}
		defer stopProfile()
	}
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
	g, err := gateway.New(cfg, gateway.Options{Logger: logger, LogLevel: level, LogLevelPinned: pinned, Banner: stderr})
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		if errors.Is(err, spool.ErrLocked) {
			return exitLocked
		}
		return exitFailure
	}
	go func() {
		for range reload {
			if err := g.Reload(path); err != nil {
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

// levelOverride reads -v and --log-level: whether the command line sets the
// level, and which.
func levelOverride(verbose bool, name string, stderr io.Writer) (bool, slog.Level, bool) {
	var lvl slog.Level
	switch {
	case verbose && name != "" && !strings.EqualFold(name, "debug"):
		fmt.Fprintf(stderr, "ferry run: -v means --log-level debug, not together with --log-level %s\n", name)
		return false, 0, false
	case verbose:
		return true, slog.LevelDebug, true
	case name == "":
		return false, 0, true
	}
	switch strings.ToLower(name) {
	case "debug", "info", "warn", "error":
		_ = lvl.UnmarshalText([]byte(name))
		return true, lvl, true
	}
	fmt.Fprintf(stderr, "ferry run: --log-level: want debug, info, warn or error (got %q)\n", name)
	return false, 0, false
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }, nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs, flagPath := flags("check", stderr, "ferry check [-print] [-c] FILE")
	print := fs.Bool("print", false, "print the effective configuration (defaults filled in)")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	path, ok := configPath(fs, *flagPath, pos, stderr)
	if !ok {
		return exitUsage
	}
	cfg, code := load(path, stderr)
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
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: ok\n", path)
	return exitOK
}

func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", 10, "bcrypt cost, 10..13 (each step doubles the work; a Pi Zero takes ~0.1 s at 10)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var pw string
	if fd, ok := terminal(stdin); ok {
		var err error
		if pw, err = promptPassword(fd, stderr); err != nil {
			fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
			return exitUsage
		}
	} else {
		// A script: the password is the first line of stdin.
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
			return exitFailure
		}
		pw = strings.TrimRight(line, "\r\n")
	}
	if pw == "" {
		fmt.Fprintln(stderr, "ferry passwd: empty password")
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

// terminal returns r's file descriptor when r is a terminal.
func terminal(r any) (int, bool) {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// promptPassword asks for the password twice on the terminal fd, without
// echo. An interrupt while echo is off restores the terminal first.
func promptPassword(fd int, prompt io.Writer) (string, error) {
	if st, err := term.GetState(fd); err == nil {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		done := make(chan struct{})
		defer func() { signal.Stop(sigs); close(done) }()
		go func() {
			select {
			case <-sigs:
				_ = term.Restore(fd, st)
				fmt.Fprintln(prompt)
				os.Exit(exitFailure)
			case <-done:
			}
		}()
	}
	read := func(label string) (string, error) {
		fmt.Fprint(prompt, label)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt) // the Enter was not echoed either
		return string(b), err
	}
	pw, err := read("Password: ")
	if err != nil || pw == "" {
		return "", err
	}
	again, err := read("Confirm password: ")
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", errors.New("the passwords do not match")
	}
	return pw, nil
}

func cmdSpool(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	isHelp := func(a string) bool { return a == "-h" || a == "-help" || a == "--help" }
	if isHelp(args[0]) || (args[0] == "dlq" && len(args) > 1 && isHelp(args[1])) {
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
	all := fs.Bool("all", false, "dlq requeue/purge: every dead letter (without ids or -all they refuse)")
	since := fs.Duration("since", 0, "replay: re-enqueue delivered messages accepted within this `duration` (e.g. 2h)")
	max := fs.Int("max", 100, "dlq ls: list at most this many")
	upstream := fs.String("upstream", "", "the spool of this `name` from upstreams (default: main, the bridge section's)")
	pos, code, ok := parseArgs(fs, args[1:])
	if !ok {
		return code
	}
	if len(pos) > 0 && sub != "dlq requeue" && sub != "dlq purge" {
		fmt.Fprintf(stderr, "ferry spool %s: unexpected arguments %q\n", sub, pos)
		return exitUsage
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
	login := adminLogin()
	login.Upstream = *upstream
	adm, err := gateway.OpenSpoolAdmin(cfg, login)
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		if errors.Is(err, gateway.ErrHTTPLogin) {
			fmt.Fprintln(stderr, loginHint)
			return exitFailure
		}
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
		printDLQ(stdout, dl, time.Now())
	case "dlq requeue", "dlq purge":
		ids, err := parseIDs(pos, *all)
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
		n, err := replay(ctx, adm, time.Now().Add(-*since), p)
		if err != nil {
			return fail(stderr, err)
		}
		p.done(fmt.Sprintf("%s: %d delivered messages re-enqueued", adm.Where(), n))
	case "compact":
		before, after, err := compact(ctx, adm, cfg.Spool.Path, p)
		if err != nil {
			return fail(stderr, err)
		}
		p.done(fmt.Sprintf("%s: %s -> %s", adm.Where(), human(before), human(after)))
	}
	return exitOK
}

func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "ferry: %v\n", err)
	if errors.Is(err, gateway.ErrHTTPLogin) {
		fmt.Fprintln(stderr, loginHint)
	}
	return exitFailure
}

// The login for a running gateway's HTTP API comes from the environment,
// not from flags, which other users can read in the process list.
const (
	envHTTPToken    = "FERRY_HTTP_TOKEN"
	envHTTPUser     = "FERRY_HTTP_USER"
	envHTTPPassword = "FERRY_HTTP_PASSWORD"
)

const loginHint = "ferry: the gateway has listeners.http.auth: set " + envHTTPPassword + " (and " + envHTTPUser +
	" if not listeners.http.auth.username) for basic, or " + envHTTPToken + " for a bearer token"

func adminLogin() gateway.AdminOptions {
	return gateway.AdminOptions{
		Token:    os.Getenv(envHTTPToken),
		Username: os.Getenv(envHTTPUser),
		Password: os.Getenv(envHTTPPassword),
	}
}

func parseIDs(args []string, all bool) ([]uint64, error) {
	// Without ids they refuse rather than act on every dead letter: a
	// forgotten argument must not re-send or delete the whole DLQ.
	if all == (len(args) > 0) {
		return nil, errors.New("give the ids of the dead letters (ferry spool dlq ls), or -all for every one; not both")
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

// printDLQ lists dead letters: what they are (topic, size), how old
// (since accepted), since when dead and why.
func printDLQ(w io.Writer, dl []gateway.DeadLetter, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tLANE\tTOPIC\tBYTES\tAGE\tDEAD FOR\tATTEMPTS\tREASON")
	for _, d := range dl {
		topic := d.Topic
		if d.DecodeError != "" {
			topic = "? (" + d.DecodeError + ")"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%d\t%s\t%s\t%d\t%s\n", d.ID, d.Lane, topic, d.PayloadBytes,
			age(now, d.EnqueuedAt), age(now, d.DeadAt), d.Attempts, d.Reason)
	}
	_ = tw.Flush()
}

// age is how long ago t was, to two units: 45s, 3m12s, 2h5m, 3d4h.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0).Round(time.Second)
	day := 24 * time.Hour
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", d/time.Second)
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	case d < day:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	return fmt.Sprintf("%dd%dh", d/day, d%day/time.Hour)
}

// replay re-enqueues what was delivered since, showing how many of the
// retained messages have been re-enqueued (replay takes them out of the
// retained set); the retained ones older than since are not replayed, so
// the total is an upper bound.
func replay(ctx context.Context, adm gateway.SpoolAdmin, since time.Time, p *progress) (n int, err error) {
	st, err := adm.Stats(ctx)
	if err != nil {
		return 0, err
	}
	total := int(st.Retained)
	start := time.Now()
	sample := func() string {
		done := 0
		if now, err := adm.Stats(ctx); err == nil {
			done = min(max(total-int(now.Retained), 0), total)
		}
		return fmt.Sprintf("%sreplaying: %d of at most %d retained messages re-enqueued, %s",
			bar(done, total), done, total, time.Since(start).Round(time.Second))
	}
	p.during(sample, func() { n, err = adm.Replay(ctx, since) })
	return n, err
}

// compact rewrites the spool file, showing how much of the new file has
// been written. The spool writes it next to the old one as PATH.compact
// (spool.Compact); through a running gateway's API it is the same file, as
// the CLI runs on the gateway's machine.
func compact(ctx context.Context, adm gateway.SpoolAdmin, path string, p *progress) (before, after int64, err error) {
	var size int64
	if fi, err := os.Stat(path); err == nil {
		size = fi.Size()
	}
	start := time.Now()
	var written int64 // sample runs on one goroutine at a time
	sample := func() string {
		state := ""
		if fi, err := os.Stat(path + ".compact"); err == nil {
			written = max(written, fi.Size()) // bbolt grows it at each 64 MiB commit
		} else if written > 0 {
			state = ", reopening" // renamed over the old file
		}
		return fmt.Sprintf("compacting a %s file: %s written%s, %s", human(size), human(written), state, time.Since(start).Round(time.Second))
	}
	p.during(sample, func() { before, after, err = adm.Compact(ctx) })
	return before, after, err
}

func printStats(w io.Writer, where string, st spool.Stats) {
	fmt.Fprintf(w, "spool %s\n", where)
	fmt.Fprintf(w, "  queued             %d messages, %s (%d leased)\n", st.Messages, human(st.Bytes), st.Leased)
	if o := st.Oldest(); !o.IsZero() {
		fmt.Fprintf(w, "  oldest             %s ago\n", time.Since(o).Round(time.Second))
	}
	fmt.Fprintf(w, "  dlq                %d messages, %s\n", st.DLQMessages, human(st.DLQBytes))
	if st.Retained > 0 {
		fmt.Fprintf(w, "  retained           %d delivered messages, %s\n", st.Retained, human(st.RetainedBytes))
	}
	full := "no"
	if st.Full {
		full = "yes: spool.overflow applies"
	}
	fmt.Fprintf(w, "  file size on disk  %s\n", human(st.FileSize))
	fmt.Fprintf(w, "  full               %s\n", full)
	fmt.Fprintf(w, "  dedupe keys        %d\n", st.DedupeEntries)
	if st.DiskFull {
		fmt.Fprintln(w, "  DISK FULL          the file system is full: new messages are refused until space frees")
	}
	if st.Failure != "" {
		fmt.Fprintf(w, "  FAILED             %s\n", st.Failure)
	}
	if r := st.Salvage; r != nil {
		fmt.Fprintf(w, "  salvaged           %s: kept %d messages, lost %s; damaged file %s\n", r.Completed.Local().Format(time.RFC3339), r.Kept, r.LostText(), r.Damaged)
		fmt.Fprintf(w, "                     cause: %s\n", r.Cause)
		if r.StateKept > 0 || r.StateLost > 0 || len(r.StateDamaged) > 0 {
			fmt.Fprintf(w, "                     local state: kept %d records, lost %s\n", r.StateKept, r.StateLostText())
		}
		if r.RawScan {
			fmt.Fprintln(w, "                     (pages were scanned: some kept messages may have been delivered before)")
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  lane\tmessages\tbytes\toldest\t")
	for i, l := range st.Lanes {
		if l.Messages == 0 {
			continue
		}
		oldest := "-"
		if !l.Oldest.IsZero() {
			oldest = time.Since(l.Oldest).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t\n", i, l.Messages, human(l.Bytes), oldest)
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
