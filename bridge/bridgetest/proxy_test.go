package bridgetest

import (
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMosquittoRestartSamePort(t *testing.T) {
	m := StartMosquitto(t, MosquittoOptions{})
	port, pid := m.Port, m.PID()
	m.Restart()
	if m.Port != port || m.PID() == pid || m.PID() == 0 {
		t.Fatalf("restart: port %d→%d pid %d→%d", port, m.Port, pid, m.PID())
	}
	c, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	m.Kill()
	if _, err := net.DialTimeout("tcp", m.Addr(), 200*time.Millisecond); err == nil {
		t.Fatal("still listening after Kill")
	}
}
