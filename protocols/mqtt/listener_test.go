package mqtt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// testCA issues certificates for 127.0.0.1 from a throwaway CA.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestListenersTLSAndWebSocket(t *testing.T) {
	ca := newTestCA(t)
	serverCert := ca.issue(t, "ferry", x509.ExtKeyUsageServerAuth)
	clientCert := ca.issue(t, "device-1", x509.ExtKeyUsageClientAuth)
	mtls := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: ca.pool, MinVersion: tls.VersionTLS12}
	plainTLS := &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}

	s, sink := startServer(t, Options{Listeners: []Listener{
		{Name: "tcp", Kind: KindTCP, Address: "127.0.0.1:0"},
		{Name: "mtls", Kind: KindTLS, Address: "127.0.0.1:0", TLS: mtls},
		{Name: "ws", Kind: KindWS, Address: "127.0.0.1:0"},
		{Name: "wss", Kind: KindWS, Address: "127.0.0.1:0", TLS: plainTLS},
	}})
	withTLS := func(certs ...tls.Certificate) func(*paho.ClientOptions) {
		return func(o *paho.ClientOptions) {
			o.SetTLSConfig(&tls.Config{RootCAs: ca.pool, Certificates: certs, MinVersion: tls.VersionTLS12})
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
			if tok := c.Publish("via/"+tc.name, 1, false, tc.name); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("publish: %v", tok.Error())
			}
			if m := expectMessage(t, ch); string(m.Payload()) != tc.name {
				t.Errorf("got %q", m.Payload())
			}
		})
	}
	sink.waitMessages(t, len(cases))

	t.Run("mtls without a client certificate", func(t *testing.T) {
		if _, _, err := pahoConnect("ssl://"+s.Addr("mtls"), "nocert", withTLS()); err == nil {
			t.Fatal("connected without a client certificate")
		}
	})
	if s.Addr("nope") != "" {
		t.Error("Addr of an unknown listener")
	}
}
