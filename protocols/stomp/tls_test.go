package stomp

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	gostomp "github.com/go-stomp/stomp/v3"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/message"
)

// selfSigned returns a server certificate for 127.0.0.1 and a pool that
// trusts it (testkit's CA).
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	c := testkit.NewCerts(t, t.TempDir())
	return c.Server, c.CAPool
}

// TestTLS: a TLS listener passed to Serve; go-stomp's client over TLS
// sends with a receipt.
func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	sink := &recsink.Sink{}
	s, err := NewServer(Options{Ingest: newCore(t, testOptions{Sink: sink}), Auth: message.AllowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(listenLocal(t), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	defer func() {
		if err := s.Close(t.Context()); err != nil {
			t.Error(err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Error(err)
		}
	}()
	nc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	c, err := gostomp.Connect(nc, goStompGuards()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send("/queue/tls.a", "text/plain", []byte("secret"), gostomp.SendOpt.Receipt); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
	if m := sink.Messages(); len(m) != 1 || m[0].Topic != "tls/a" || string(m[0].Payload) != "secret" {
		t.Fatalf("sink %v", m)
	}
}

func TestListenAndServe(t *testing.T) {
	s, err := NewServer(Options{Ingest: newCore(t, testOptions{Sink: &recsink.Sink{}}), Auth: message.AllowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ListenAndServe("256.0.0.1:0", nil); err == nil || !strings.Contains(err.Error(), "stomp: listen") {
		t.Fatalf("bad address: %v", err)
	}
	ln := listenLocal(t)
	addr := ln.Addr().String()
	_ = ln.Close() // a free port, reused at once
	cert, pool := selfSigned(t)
	served := make(chan error, 1)
	go func() {
		served <- s.ListenAndServe(addr, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}()
	var nc *tls.Conn
	waitFor(t, "listener", func() bool {
		nc, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
		return err == nil
	})
	c, err := gostomp.Connect(nc, goStompGuards()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send("/queue/lns", "", []byte("x"), gostomp.SendOpt.Receipt); err != nil {
		t.Fatal(err)
	}
	_ = c.Disconnect()
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatal(err)
	}
}
