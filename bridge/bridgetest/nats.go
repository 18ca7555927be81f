package bridgetest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/natsserver"

	"github.com/ferrymq/ferry/internal/testkit"
)

// NATSPath finds nats-server ("" if none): $NATS_SERVER, PATH,
// /usr/sbin/nats-server.
func NATSPath() string { return natsserver.Path() }

// RequireNATS skips t under -short or without nats-server (failing
// instead when CI=true) and returns the binary.
func RequireNATS(t testing.TB) string {
	t.Helper()
	return requireProgram(t, "nats-server", NATSPath, "nats-server", "NATS_SERVER")
}

// NATS is a nats-server process with JetStream owned by a test.
type NATS struct {
	t    testing.TB
	bin  string
	conf string
	Name string
	Port int

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	dir    string
}

// StartNATS runs one nats-server with JetStream (file storage in a test
// directory) on a free 127.0.0.1 port. Cleanup kills it.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n := newNATS(t, "n1", FreePort(t))
	n.write(nil, 0)
	n.Start()
	return n
}

// StartNATSCluster runs size nats-servers with JetStream clustered over
// routes on loopback, and waits until each accepts clients. Cleanup kills
// them.
func StartNATSCluster(t testing.TB, size int) []*NATS {
	t.Helper()
	nodes := make([]*NATS, size)
	routes := make([]int, size)
	for i := range nodes {
		nodes[i] = newNATS(t, fmt.Sprintf("n%d", i+1), FreePort(t))
		routes[i] = FreePort(t)
	}
	for i, n := range nodes {
		var peers []int
		for j, r := range routes {
			if j != i {
				peers = append(peers, r)
			}
		}
		n.write(peers, routes[i])
	}
	for _, n := range nodes {
		n.Start()
	}
	return nodes
}

func newNATS(t testing.TB, name string, port int) *NATS {
	bin := RequireNATS(t)
	n := &NATS{t: t, bin: bin, Name: name, Port: port, dir: t.TempDir()}
	t.Cleanup(n.Kill)
	return n
}

func (n *NATS) write(peers []int, routePort int) {
	c := natsserver.Config{Name: n.Name, Port: n.Port, StoreDir: filepath.Join(n.dir, "js"), ClusterPort: routePort, Routes: peers}
	n.conf = filepath.Join(n.dir, "nats.conf")
	if err := os.WriteFile(n.conf, []byte(c.File()), 0o600); err != nil {
		n.t.Fatal(err)
	}
}

// Addr is host:port of the client listener.
func (n *NATS) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)) }

// URL is nats://Addr.
func (n *NATS) URL() string { return "nats://" + n.Addr() }

// Start starts the server (again, with its store) and waits until it
// accepts connections.
func (n *NATS) Start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.t.Fatal("bridgetest: nats-server already running")
	}
	cmd := exec.Command(n.bin, natsserver.Args(n.conf, filepath.Join(n.dir, "nats.log"))...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("bridgetest: start nats-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	if !waitListening(n.Addr(), exited, testkit.Timeout(20*time.Second)) {
		_ = cmd.Process.Kill()
		<-exited
		n.t.Fatalf("bridgetest: nats-server did not come up on %s; log:\n%s", n.Addr(), n.Log())
	}
	n.cmd, n.exited = cmd, exited
}

// Kill ends the server with SIGKILL.
func (n *NATS) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
	n.cmd = nil
}

// Log returns the server's log so far.
func (n *NATS) Log() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "nats.log"))
	return string(b)
}
