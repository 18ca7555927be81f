package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/internal/testkit"
)

func TestListenersTLSAndWebSocket(t *testing.T) {
	ca := testkit.NewCerts(t, t.TempDir())
	serverCert := ca.Server
	clientCert := ca.Issue(t, "device-1", x509.ExtKeyUsageClientAuth)
	mtls := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: ca.CAPool, MinVersion: tls.VersionTLS12}
	plainTLS := &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}

	s, sink := startServer(t, testOptions{Options: Options{Listeners: []Listener{
		{Name: "tcp", Kind: KindTCP, Address: "127.0.0.1:0"},
		{Name: "mtls", Kind: KindTLS, Address: "127.0.0.1:0", TLS: mtls},
		{Name: "ws", Kind: KindWS, Address: "127.0.0.1:0"},
		{Name: "wss", Kind: KindWS, Address: "127.0.0.1:0", TLS: plainTLS},
	}}})
	withTLS := func(certs ...tls.Certificate) func(*paho.ClientOptions) {
		return func(o *paho.ClientOptions) {
			o.SetTLSConfig(&tls.Config{RootCAs: ca.CAPool, Certificates: certs, MinVersion: tls.VersionTLS12})
		}
	}
	cases := []struct {
		name, url string
		tweak     func(*paho.ClientOptions)
	}{
		{"tcp", "tcp://" + s.Addr("tcp"), nil},
		{"mtls", "ssl://" + s.Addr("mtls"), withTLS(clientCert)},
		{"ws", "ws://" + s.Addr("ws") + "/mqtt", nil},
		{"wss", "wss://" + s.Addr("wss") + "/mqtt", withTLS()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := pahoClient(t, tc.url, "dev-"+tc.name, tc.tweak)
			ch := subscribe(t, c, "via/"+tc.name, 1)
			if tok := c.Publish("via/"+tc.name, 1, false, tc.name); !tok.WaitTimeout(guard()) || tok.Error() != nil {
				t.Fatalf("publish: %v", tok.Error())
			}
			if m := expectMessage(t, ch); string(m.Payload()) != tc.name {
				t.Errorf("got %q", m.Payload())
			}
		})
	}
	sink.WaitMessages(t, len(cases))

	t.Run("mtls without a client certificate", func(t *testing.T) {
		if _, _, err := pahoConnect("ssl://"+s.Addr("mtls"), "nocert", withTLS()); err == nil {
			t.Fatal("connected without a client certificate")
		}
	})
	if s.Addr("nope") != "" {
		t.Error("Addr of an unknown listener")
	}
}
