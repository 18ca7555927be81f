// Package natsserver describes the nats-server with JetStream that Ferry's
// tests and benchmarks run as a JetStream upstream: where the binary is,
// the configuration file and the command line. Starting, waiting for and
// stopping the process stay with the caller (bridgetest for tests,
// cmd/bench-compare for the benchmark), which own the process in their own
// way; what the server is told lives here once.
package natsserver

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/ferrymq/ferry/internal/sysbin"
)

// Path finds nats-server ("" if none): $NATS_SERVER, PATH, /usr/sbin.
func Path() string { return sysbin.Find("NATS_SERVER", "nats-server") }

// Config is one server: a client listener on 127.0.0.1 and JetStream with
// file storage, optionally clustered over routes on loopback.
type Config struct {
	Name     string // server_name, also the JetStream node name
	Port     int    // client listener on 127.0.0.1
	StoreDir string // JetStream file store
	// ClusterPort, when not 0, is this server's route listener, and
	// Routes the route ports of its peers.
	ClusterPort int
	Routes      []int
}

// File is the content of the configuration file.
func (c Config) File() string {
	conf := []string{
		fmt.Sprintf("server_name: %s", c.Name),
		fmt.Sprintf("listen: %s", loopback(c.Port)),
		fmt.Sprintf("jetstream { store_dir: %q }", c.StoreDir),
	}
	if c.ClusterPort > 0 {
		rs := make([]string, 0, len(c.Routes))
		for _, p := range c.Routes {
			rs = append(rs, "nats-route://"+loopback(p))
		}
		conf = append(conf, fmt.Sprintf("cluster { name: ferry-test, listen: %s, routes: [%s] }", loopback(c.ClusterPort), strings.Join(rs, ", ")))
	}
	return strings.Join(conf, "\n") + "\n"
}

// Args is the command line after the binary: the configuration file, and
// the log file ("" logs to stderr).
func Args(confPath, logPath string) []string {
	args := []string{"-c", confPath}
	if logPath != "" {
		args = append(args, "-l", logPath)
	}
	return args
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
