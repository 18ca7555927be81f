package natsserver

import (
	"slices"
	"strings"
	"testing"
)

func TestConfigFile(t *testing.T) {
	single := Config{Name: "n1", Port: 4222, StoreDir: "/tmp/js dir"}.File()
	for _, want := range []string{"server_name: n1\n", "listen: 127.0.0.1:4222\n", `jetstream { store_dir: "/tmp/js dir" }`} {
		if !strings.Contains(single, want) {
			t.Errorf("single server: %q lacks %q", single, want)
		}
	}
	if strings.Contains(single, "cluster") {
		t.Errorf("single server has a cluster block: %q", single)
	}
	clustered := Config{Name: "n2", Port: 4223, StoreDir: "/s", ClusterPort: 6223, Routes: []int{6222, 6224}}.File()
	want := "cluster { name: ferry-test, listen: 127.0.0.1:6223, routes: [nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6224] }"
	if !strings.Contains(clustered, want) {
		t.Errorf("clustered: %q lacks %q", clustered, want)
	}
}

func TestArgs(t *testing.T) {
	if got := Args("c.conf", "n.log"); !slices.Equal(got, []string{"-c", "c.conf", "-l", "n.log"}) {
		t.Errorf("with a log file: %q", got)
	}
	if got := Args("c.conf", ""); !slices.Equal(got, []string{"-c", "c.conf"}) {
		t.Errorf("log to stderr: %q", got)
	}
}
