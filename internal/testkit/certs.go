package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Certs is a throwaway CA with a server certificate for 127.0.0.1 and
// localhost and a client certificate (CN ferry-client), written as PEM files
// into a test directory: the one certificate maker of the tests (listeners,
// mutual TLS, the upstream's TLS). Issue makes more from the same CA.
type Certs struct {
	CAFile, ServerCert, ServerKey, ClientCert, ClientKey string
	CAPool                                               *x509.CertPool
	Server, Client                                       tls.Certificate

	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

// NewCerts generates a fresh CA and certificates under dir.
func NewCerts(t testing.TB, dir string) *Certs {
	t.Helper()
	caKey, caCert, caDER := newCA(t, "ferry test ca")
	c := &Certs{
		CAFile:     filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client.key"),
		CAPool: x509.NewCertPool(), caCert: caCert, caKey: caKey,
	}
	c.CAPool.AddCert(caCert)
	writePEM(t, c.CAFile, "CERTIFICATE", caDER)
	srvDER, srvKey := leaf(t, caCert, caKey, "localhost", x509.ExtKeyUsageServerAuth)
	writePEM(t, c.ServerCert, "CERTIFICATE", srvDER)
	writeKey(t, c.ServerKey, srvKey)
	cliDER, cliKey := leaf(t, caCert, caKey, "ferry-client", x509.ExtKeyUsageClientAuth)
	writePEM(t, c.ClientCert, "CERTIFICATE", cliDER)
	writeKey(t, c.ClientKey, cliKey)
	var err error
	if c.Client, err = tls.LoadX509KeyPair(c.ClientCert, c.ClientKey); err != nil {
		t.Fatal(err)
	}
	if c.Server, err = tls.LoadX509KeyPair(c.ServerCert, c.ServerKey); err != nil {
		t.Fatal(err)
	}
	return c
}

// Issue returns a new certificate from the CA with common name cn, for
// 127.0.0.1 and localhost, for usage (x509.ExtKeyUsageClientAuth for a
// device certificate whose CN becomes its username, say).
func (c *Certs) Issue(t testing.TB, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	der, key := leaf(t, c.caCert, c.caKey, cn, usage)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// ServerTLS is a TLS config presenting the server certificate; with
// mutual, clients must present a certificate of the CA.
func (c *Certs) ServerTLS(mutual bool) *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{c.Server}, MinVersion: tls.VersionTLS12}
	if mutual {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, c.CAPool
	}
	return cfg
}

// ClientTLS is a TLS config that trusts the CA and presents the client
// certificate.
func (c *Certs) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: c.CAPool, Certificates: []tls.Certificate{c.Client}, MinVersion: tls.VersionTLS12}
}

// OtherCA writes an unrelated CA into dir and returns its file.
func OtherCA(t testing.TB, dir string) string {
	t.Helper()
	_, _, der := newCA(t, "some other ca")
	f := filepath.Join(dir, "other-ca.pem")
	writePEM(t, f, "CERTIFICATE", der)
	return f
}

func newCA(t testing.TB, cn string) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, der
}

func leaf(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeKey(t testing.TB, path string, key *ecdsa.PrivateKey) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "PRIVATE KEY", der)
}
