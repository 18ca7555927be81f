package spool

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	bolt "go.etcd.io/bbolt"
)

// gatewayMessageSize is message i as the gateway stores it: a payload of
// size bytes from an MQTT client, encoded by message.Encode after routing.
func gatewayMessageSize(i int, now time.Time, size int) []byte {
	return message.Encode(nil, gatewayMessage(i, now, size))
}

// gatewayEntry is message i as the gateway puts it with the default route
// (dedupe: retransmit): with the dedupe key its first send records.
func gatewayEntry(i int, now time.Time, size int) Entry {
	m := gatewayMessage(i, now, size)
	m.SendID = strconv.Itoa(i%65535 + 1) // the MQTT packet id
	message.Route{Name: "default", Dedupe: message.Dedupe{Kind: message.DedupeRetransmit}}.Apply(m)
	return Entry{Data: message.Encode(nil, m), DedupeKey: m.DedupeKey, DedupeRecordOnly: m.DedupeRecordOnly}
}

func gatewayMessage(i int, now time.Time, size int) *message.Message {
	payload := make([]byte, size)
	for j := range payload {
		payload[j] = byte('a' + (i+j)%26)
	}
	m := &message.Message{
		ID:            message.NewID(now),
		Topic:         "sensors/room1/temp",
		UpstreamTopic: "sites/gw1/sensors/room1/temp",
		Payload:       payload,
		QoS:           1,
		UpstreamQoS:   1,
		Source:        message.Source{Protocol: message.ProtoMQTT, ClientID: fmt.Sprintf("sensor-%04d", i%1000)},
		AcceptedAt:    now,
	}
	return m
}

// fillGateway puts n gateway messages from 64 producers in Sync durability,
// as the gateway's ingest does.
func fillGateway(tb testing.TB, s *Spool, n int) { fillGatewaySize(tb, s, n, 256) }

func fillGatewaySize(tb testing.TB, s *Spool, n, size int) {
	tb.Helper()
	fillWith(tb, s, n, func(i int) Entry { return Entry{Data: gatewayMessageSize(i, time.Now(), size)} })
}

// fillWith puts entry(i) for i in [0, n) from 64 producers.
func fillWith(tb testing.TB, s *Spool, n int, entry func(i int) Entry) {
	tb.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if _, err := s.Put(context.Background(), entry(i)); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkBytesPerMessage measures the file size per queued message with
// 100k and (BENCH_FULL=1) 1M gateway messages of 256-byte payloads (and
// 64 and 1024 bytes at 100k), and the logical size (what MaxBytes counts)
// per message. B/msg is bbolt's data size (pages in use); size-B/msg the
// file's size, which bbolt grows ahead in 16 MiB steps (sparse);
// alloc-B/msg the blocks the file system allocated for it.
func BenchmarkBytesPerMessage(b *testing.B) {
	type tc struct{ n, payload int }
	cases := []tc{{100_000, 256}, {100_000, 64}, {100_000, 1024}}
	if os.Getenv("BENCH_FULL") == "1" {
		cases = append(cases, tc{1_000_000, 256})
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("messages=%d/payload=%d", c.n, c.payload), func(b *testing.B) {
			var st Stats
			var disk, alloc int64
			for b.Loop() {
				s := openTest(b, Options{MaxBytes: -1})
				fillGatewaySize(b, s, c.n, c.payload)
				st = s.Stats()
				var sys syscall.Stat_t
				if syscall.Stat(s.Path(), &sys) == nil {
					disk, alloc = sys.Size, sys.Blocks*512
				}
				_ = s.Close()
			}
			b.ReportMetric(float64(st.FileSize)/float64(c.n), "B/msg")
			b.ReportMetric(float64(disk)/float64(c.n), "size-B/msg")
			b.ReportMetric(float64(alloc)/float64(c.n), "alloc-B/msg")
			b.ReportMetric(float64(st.Bytes)/float64(c.n), "logical-B/msg")
			b.ReportMetric(float64(st.FileSize)/float64(st.Bytes), "file/logical")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// TestBytesPerMessage (issue 9, defect 8): a spool of gateway messages
// with 256-byte payloads takes at most 450 bytes of file per message and
// at most 1.3 times what it counts against MaxBytes. (Before: 1,037 bytes,
// 2.5 times: bbolt split pages half full and records were larger.)
func TestBytesPerMessage(t *testing.T) {
	n := 20_000
	if testing.Short() {
		n = 5_000
	}
	s := openTest(t, Options{MaxBytes: 1 << 30}) // the cap no test reaches, and allowed on 32-bit
	fillGateway(t, s, n)
	st := s.Stats()
	per, ratio := float64(st.FileSize)/float64(n), float64(st.FileSize)/float64(st.Bytes)
	t.Logf("%d messages: %.0f bytes of file per message, %.0f counted, file/counted %.2f", n, per, float64(st.Bytes)/float64(n), ratio)
	if per > 450 || ratio > 1.3 {
		t.Fatalf("%.0f bytes of file per message (want <= 450), %.2f times the counted size (want <= 1.3)", per, ratio)
	}
}

// TestBytesPerMessageWithDedupe: the same with the dedupe key the default
// route gives every QoS 1 MQTT message, at most 680 bytes of pages per
// message. (Before: 704, and 732 with -short: the dedupe expiry index, whose keys only grow
// with time, was split half full.)
func TestBytesPerMessageWithDedupe(t *testing.T) {
	n := 20_000
	if testing.Short() {
		n = 5_000
	}
	s := openTest(t, Options{MaxBytes: 1 << 30})
	fillWith(t, s, n, func(i int) Entry { return gatewayEntry(i, time.Now(), 256) })
	st := s.Stats()
	if st.DedupeEntries != int64(n) {
		t.Fatalf("%d dedupe keys recorded, want %d", st.DedupeEntries, n)
	}
	var used int64 // the pages in use: the file grows in 16 MiB steps
	_ = s.view(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	per := float64(used) / float64(n)
	t.Logf("%d messages with dedupe keys: %.0f bytes of pages per message, %.0f counted", n, per, float64(st.Bytes)/float64(n))
	if per > 680 {
		t.Fatalf("%.0f bytes of pages per message with dedupe keys (want <= 680)", per)
	}
}

const openReportEnv = "FERRY_SPOOL_OPEN_REPORT"

// runOpenReportChild is the child of BenchmarkOpenRSS1M (TestMain runs it,
// through Children, when openReportEnv is set). It never returns.
func runOpenReportChild() {
	openReport(os.Getenv(openReportEnv))
	os.Exit(0)
}

// openReport opens the spool at path and prints how long Open took and the
// process's resident memory after it.
func openReport(path string) {
	var r0, r1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	start := time.Now()
	s, err := Open(path, Options{MaxBytes: -1})
	if err != nil {
		fmt.Printf("{\"err\":%q}\n", err)
		return
	}
	el := time.Since(start)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	cpu := r1.Utime.Nano() - r0.Utime.Nano() + r1.Stime.Nano() - r0.Stime.Nano()
	runtime.GC()
	rss := procStatus()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := s.Stats()
	_ = s.Close()
	out, _ := json.Marshal(map[string]int64{"open_ns": int64(el), "cpu_ns": cpu, "rss_kb": rss["VmRSS"], "rss_file_kb": rss["RssFile"],
		"rss_anon_kb": rss["RssAnon"], "heap_inuse": int64(ms.HeapInuse), "messages": st.Messages, "file": st.FileSize})
	fmt.Println(string(out))
}

// procStatus reads the kB fields of /proc/self/status.
func procStatus() map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// BenchmarkOpenRSS1M fills a spool with 1M gateway messages, closes it,
// and opens it in a fresh process each iteration: Open time and the
// resident memory of that process right after Open.
func BenchmarkOpenRSS1M(b *testing.B) {
	if testing.Short() {
		b.Skip("fills 1M messages")
	}
	n := 1_000_000
	if v := os.Getenv("FERRY_SPOOL_OPEN_MESSAGES"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	path := filepath.Join(b.TempDir(), "big.db")
	s, err := Open(path, Options{Durability: Interval, MaxBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	fillGateway(b, s, n)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	var openNS, cpuNS, rss, rssFile, runs float64
	for b.Loop() {
		c := testkit.StartChild(b, openReportEnv+"="+path)
		if err := c.Wait(); err != nil {
			b.Fatalf("child: %v\n%s", err, strings.Join(c.Lines(), "\n"))
		}
		var r map[string]any
		var line []byte
		for _, l := range c.Lines() {
			if strings.HasPrefix(l, "{") {
				line = []byte(l)
			}
		}
		if err := json.Unmarshal(line, &r); err != nil || r["err"] != nil {
			b.Fatalf("child said %s (%v)", line, err)
		}
		if int(r["messages"].(float64)) != n {
			b.Fatalf("child found %v messages, want %d", r["messages"], n)
		}
		openNS += r["open_ns"].(float64)
		cpuNS += r["cpu_ns"].(float64)
		rss += r["rss_kb"].(float64)
		rssFile += r["rss_file_kb"].(float64)
		runs++
		b.Logf("open %v (CPU %v), RSS %.0f MiB (file-backed %.0f MiB, anon %.0f MiB), heap %.0f MiB, file %.0f MiB",
			time.Duration(r["open_ns"].(float64)).Round(time.Millisecond), time.Duration(r["cpu_ns"].(float64)).Round(time.Millisecond), r["rss_kb"].(float64)/1024, r["rss_file_kb"].(float64)/1024,
			r["rss_anon_kb"].(float64)/1024, r["heap_inuse"].(float64)/(1<<20), r["file"].(float64)/(1<<20))
	}
	b.ReportMetric(openNS/runs/1e6, "ms/open")
	b.ReportMetric(cpuNS/runs/1e6, "ms-cpu/open")
	b.ReportMetric(rss/runs/1024, "MiB-RSS")
	b.ReportMetric(rssFile/runs/1024, "MiB-RSS-file")
	b.ReportMetric(0, "ns/op")
}
